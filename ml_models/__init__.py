"""ml_models: a plain library (no Dagster): video I/O, models, synthetic data, metrics."""
