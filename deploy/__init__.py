"""Deployment: export (``make export``), the prediction server (``make serve``), its smoke test."""
