"""Tests of the review web app: real uvicorn servers, real databases, a real browser."""
