"""Tests of the surg-assets project."""
