"""What every JSON request body of the API is built from: strict types, finite numbers, and
integers that fit the catalog's columns.

Python's ``json`` module (FastAPI's body parser) reads ``NaN`` and ``Infinity``, and pydantic's
lax mode turns ``true`` into ``1``; neither is a value a surgeon's client means to send, and an
integer past 64 bits crashes the database driver. These are refused with a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# SQLite's and PostgreSQL's BIGINT: the widest integer any catalog column holds.
DB_INT_MAX = 2**63 - 1

DbId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""A row id (token, model version, annotation)."""

DbInt = Annotated[int, Field(ge=-DB_INT_MAX, le=DB_INT_MAX)]
"""Any integer stored in the catalog (track ids, class ids)."""

DbCount = Annotated[int, Field(ge=0, le=DB_INT_MAX)]
"""A non-negative integer stored in the catalog (frame indexes, sizes)."""


class ApiBody(BaseModel):
    """Base of every request body: strict JSON types, no NaN or infinity."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)
