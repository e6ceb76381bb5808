"""Views, one module per feature. Each view loads, checks permission, acts, and renders or redirects."""
