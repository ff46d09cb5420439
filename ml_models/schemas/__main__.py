"""``python -m ml_models.schemas``: regenerate the committed JSON Schemas from the models."""

from ml_models.schemas import write_all

for path in write_all():
    print(f"wrote {path}")
