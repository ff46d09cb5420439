"""Process-wide settings, read once from environment variables.

Every setting the platform reads is listed here (and in the README's settings table) so there is
exactly one place that knows the variable names and their defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ml_models.errors import InputError


def env_float(name: str, default: float) -> float:
    """A numeric setting from the environment; a malformed value is the user's error."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"setting {name}={raw!r} is not a number; set it to a number.") from None


def env_int(name: str, default: int) -> int:
    """A whole-number setting from the environment."""
    value = env_float(name, default)
    if value != int(value):
        raise InputError(f"setting {name}={value} must be a whole number.")
    return int(value)


def env_flag(name: str) -> bool:
    """An on/off setting: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/unset."""
    raw = (os.environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise InputError(f"setting {name}={raw!r} is not on or off; set it to 1 or 0.")


@dataclass(frozen=True)
class Settings:
    """Where things live and which resource set to use.

    Attributes:
        home: ``SURG_HOME``; holds the local lake, the catalog database and the Dagster home.
        env: ``SURG_ENV``; ``local`` (embedded defaults) or ``prod`` (S3, PostgreSQL).
        catalog_url: ``SURG_CATALOG_URL``; SQLAlchemy URL, SQLite under ``home`` by default.
    """

    home: Path
    env: str
    catalog_url: str

    @property
    def lake_root(self) -> Path:
        """The local blob store's root directory."""
        return self.home / "lake"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance directory (``DAGSTER_HOME``)."""
        return self.home / "dagster"

    @property
    def secret_key_file(self) -> Path:
        """File holding the key that signs local URLs (created on first use, mode 0600)."""
        return self.home / "secret.key"


def load_settings() -> Settings:
    """Read the settings from the environment (call again after changing ``os.environ``)."""
    home = Path(os.environ.get("SURG_HOME") or "./.surg").expanduser().resolve()
    env = (os.environ.get("SURG_ENV") or "local").strip().lower()
    if env not in ("local", "prod"):
        raise InputError(f"setting SURG_ENV={env!r} is unknown; use 'local' or 'prod'.")
    catalog_url = os.environ.get("SURG_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}"
    return Settings(home=home, env=env, catalog_url=catalog_url)
