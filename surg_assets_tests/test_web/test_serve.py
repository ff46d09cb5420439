"""`surg serve` as a user starts it: a real process, plain HTTP and TLS; and the web app's rooms."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from surg_assets_tests.test_cli import SURG
from surg_assets_tests.test_web.conftest import free_port


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """`surg serve` in its own process (TLS when the test is parametrized with tls=True)."""
    home = tmp_path / "home"
    env = {**os.environ, "SURG_HOME": str(home), "SURG_ENV": "local"}
    env.pop("SURG_CATALOG_URL", None)
    subprocess.run(
        [SURG, "users", "add", "ada", "--role", "admin", "--password-stdin"],
        input="pw-of-ada-1\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    port = free_port()
    args = [SURG, "serve", "--host", "127.0.0.1", "--port", str(port)]
    scheme = "http"
    if getattr(request, "param", False):
        cert, key = _self_signed(tmp_path)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        scheme = "https"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/health", verify=False, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "surg serve did not answer"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_surg_serve_answers_with_openapi_and_the_page(served: str) -> None:
    spec = httpx.get(f"{served}/openapi.json").json()
    assert "/api/uploads/{upload_id}/complete" in spec["paths"]
    page = httpx.get(served)
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert httpx.get(f"{served}/static/vendor/uppy.min.js").status_code == 200
    assert httpx.get(f"{served}/api/cases/1").status_code == 401


@pytest.mark.parametrize("served", [True], indirect=True)
def test_surg_serve_over_tls_sets_secure_cookies_and_hsts(served: str) -> None:
    with httpx.Client(base_url=served, verify=False) as c:
        r = c.post("/api/auth/login", json={"name": "ada", "password": "pw-of-ada-1"})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_the_web_app_builds_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from surg_web import create_app; create_app();"
        "assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules, 'torch loaded'"
    )
    env = {**os.environ, "SURG_HOME": str(tmp_path / "home"), "SURG_ENV": "local"}
    env.pop("SURG_CATALOG_URL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
