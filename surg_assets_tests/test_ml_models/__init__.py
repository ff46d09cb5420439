"""Tests: ml_models."""
