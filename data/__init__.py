"""Data stages: from the raw Amazon Products CSV files to a labelled table of image URLs."""
