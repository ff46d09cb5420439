"""surg_assets/assets."""
