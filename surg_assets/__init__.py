"""surg_assets."""
