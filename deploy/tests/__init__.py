"""End-to-end tests of the exported model and the prediction server."""
