"""Plots and the HTML report (not built yet)."""
