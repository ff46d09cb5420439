"""API routers of the review app, one file per area."""
