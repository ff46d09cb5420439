"""Settings of the web app, read from environment variables (listed in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from resources.settings import env_float, env_int


@dataclass(frozen=True)
class WebConfig:
    """How the web app behaves.

    Attributes:
        session_hours: ``SURG_WEB_SESSION_HOURS``; a login lasts this long.
        secure_cookies: ``SURG_WEB_SECURE_COOKIES``; ``auto`` marks cookies Secure when the
            request came over TLS (directly or via a proxy that uvicorn trusts), ``1`` always.
        part_mb: ``SURG_UPLOAD_PART_MB``; preferred upload part size (S3 needs at least 5).
        max_upload_gb: ``SURG_UPLOAD_MAX_GB``; largest accepted video.
        url_ttl_s: ``SURG_UPLOAD_URL_TTL_S``; lifetime of a signed part URL.
        max_json_kb: ``SURG_WEB_MAX_JSON_KB``; larger JSON bodies are refused with 413.
        cors_origins: ``SURG_WEB_CORS_ORIGINS``; comma-separated origins allowed to call the API
            from other sites (none by default: the front end is served by the app itself).
    """

    session_hours: float = 12.0
    secure_cookies: str = "auto"
    part_mb: float = 8.0
    max_upload_gb: float = 50.0
    url_ttl_s: int = 3600
    max_json_kb: int = 1024
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls) -> WebConfig:
        """Read every setting from the environment (defaults above)."""
        d = cls()
        origins = os.environ.get("SURG_WEB_CORS_ORIGINS", "")
        return cls(
            session_hours=env_float("SURG_WEB_SESSION_HOURS", d.session_hours),
            secure_cookies=(os.environ.get("SURG_WEB_SECURE_COOKIES") or "auto").lower(),
            part_mb=env_float("SURG_UPLOAD_PART_MB", d.part_mb),
            max_upload_gb=env_float("SURG_UPLOAD_MAX_GB", d.max_upload_gb),
            url_ttl_s=env_int("SURG_UPLOAD_URL_TTL_S", d.url_ttl_s),
            max_json_kb=env_int("SURG_WEB_MAX_JSON_KB", d.max_json_kb),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
        )
