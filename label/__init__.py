"""Label correction: find likely label errors, review them in a web page, apply the decisions."""
