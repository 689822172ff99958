"""Label correction: find, review and apply label fixes (not built yet)."""
