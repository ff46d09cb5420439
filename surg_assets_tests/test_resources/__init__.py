"""Tests: resources."""
