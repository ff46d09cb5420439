"""surg_web."""
