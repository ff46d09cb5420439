"""ml_models: plain Python library for video I/O, models, synthetic data and metrics (no Dagster)."""
