"""Deployment: model export and the prediction server (not built yet)."""
