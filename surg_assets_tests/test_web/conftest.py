"""A real uvicorn server running the review app on a free port, and users of every role."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

PASSWORD = "correct horse battery"
ROLES = {
    "ada": "admin",
    "sam": "surgeon",
    "sue": "surgeon",
    "rey": "reviewer",
    "dan": "data_scientist",
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebServer:
    """A running app: its URL, its resources and a way to log users in."""

    url: str
    home: Path
    resources: dict[str, Any]
    app: Any

    @property
    def catalog(self) -> Any:
        return self.resources["catalog"]

    @property
    def blob_store(self) -> Any:
        return self.resources["blob_store"]

    def client(self, user: str | None = None) -> httpx.Client:
        """An HTTP client, logged in as ``user`` (CSRF header set) when given."""
        c = httpx.Client(base_url=self.url, timeout=30)
        if user:
            r = c.post("/api/auth/login", json={"name": user, "password": PASSWORD})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c


def start_server(
    home: Path, resources: dict[str, Any] | None = None, **config: Any
) -> Iterator[WebServer]:
    """Run ``create_app`` under uvicorn in a thread until the generator is closed."""
    import uvicorn

    from resources.accounts import Accounts
    from resources.settings import Settings
    from surg_assets.settings import build_resources
    from surg_web import create_app
    from surg_web.config import WebConfig

    settings = Settings(home=home, env="local", catalog_url=f"sqlite:///{home / 'catalog.db'}")
    resources = resources or build_resources(settings)
    web_config = WebConfig(**{"part_mb": 0.0625, **config})  # 64 KiB parts: many parts, fast
    app = create_app(settings, resources=resources, config=web_config)
    accounts = Accounts(resources["catalog"])
    for name, role in ROLES.items():
        if accounts.get_user(name) is None:
            accounts.add_user(name, role, PASSWORD)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield WebServer(f"http://127.0.0.1:{port}", home, resources, app)
    finally:
        server.should_exit = True
        thread.join(10)
        resources["catalog"].dispose()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """One server per test module over a fresh local SURG_HOME (SQLite, folder lake)."""
    yield from start_server(tmp_path_factory.mktemp("web-home"))
