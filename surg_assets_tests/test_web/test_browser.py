"""The review app in a real browser: Playwright (pip) driving Debian's chromium, headless, against
a real uvicorn server. Log in, drop a video into the uploader (interrupted and resumed), see the
case appear, "analyse" it, play it with phase markers and overlay pixels, correct a box.

Screenshots are kept under ``$SURG_TEST_ARTIFACTS/web`` (a temporary folder when unset).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resources.catalog import Annotation
from surg_assets_tests.conftest import skip_or_fail
from surg_assets_tests.test_web.conftest import PASSWORD, WebServer, start_server
from surg_assets_tests.test_web.helpers import write_perception

CHROMIUM = os.environ.get("SURG_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright (no `playwright install`: no downloaded browsers)."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        skip_or_fail(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """A fresh server for the browser (64 KiB parts, so a small clip has many parts)."""
    yield from start_server(tmp_path_factory.mktemp("browser-home"))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    root = os.environ.get("SURG_TEST_ARTIFACTS")
    folder = Path(root) / "web" if root else tmp_path_factory.mktemp("web-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s H.264 clip of noise (about 18 MiB: four parts of Uppy's minimum 5 MiB), named
    the way a careless export would be: the name must never reach the server."""
    import av
    import numpy as np

    path = tmp_path_factory.mktemp("clip") / "Patient Jane Doe 1970-01-01.mp4"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        stream.options = {"crf": "8", "preset": "ultrafast"}
        for _ in range(100):
            frame = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert path.stat().st_size > 15 * 1024 * 1024
    return path


def login(page: Any, url: str, user: str) -> None:
    page.goto(url)
    page.fill("#login-form input[name=name]", user)
    page.fill("#login-form input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#topbar:not([hidden])")


def test_upload_review_and_correct_in_chromium(
    browser: Any, site: WebServer, clip: Path, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    puts: Counter[str] = Counter()
    page.on(
        "requestfinished",
        lambda req: (
            puts.update([req.url.split("?")[0].rsplit("/", 1)[-1]]) if req.method == "PUT" else None
        ),
    )
    # Interrupt the upload: parts 4 and later hang until released, as on a dropped connection.
    gate = threading.Event()
    held: list[Any] = []

    def hold_late_parts(route: Any) -> None:
        part = int(route.request.url.split("part-")[1][:5])
        if part >= 4 and not gate.is_set():
            held.append(route)
            return
        route.continue_()

    page.route("**/blob/uploads-staging/**", hold_late_parts)
    login(page, site.url, "ada")
    page.wait_for_selector(".uppy-Dashboard")
    page.set_input_files(".uppy-Dashboard-input", str(clip))

    # Parts 1-3 arrive, the rest hang: then the page is reloaded in the middle of the upload.
    page.wait_for_function("() => document.querySelectorAll('#case-rows tr[data-case]').length")
    for _ in range(100):
        if len(puts) >= 3 and len(held) >= 1:
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)
    assert set(puts) == {"part-00001", "part-00002", "part-00003"}, puts
    page.screenshot(path=str(artifacts / "upload-interrupted.png"))
    for route in held:
        with contextlib.suppress(Exception):  # the connection drops: the held parts fail
            route.abort()
    page.unroute("**/blob/uploads-staging/**")
    page.reload()
    # Golden Retriever remembers the upload; a surgical video is too big for the browser to keep,
    # so the page asks for the file again and resumes from the parts the server already has.
    page.wait_for_function("() => window.surgUppy && window.surgUppy.getFiles().length === 1")
    page.click(".uppy-DashboardContent-addMore")
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(clip))
    page.wait_for_function("() => window.surgUppy.getFiles().every(f => !f.isGhost)")
    page.click(".uppy-StatusBar-actionBtn--upload")
    page.wait_for_function(
        "() => window.surgUppy.getState().totalProgress === 100 &&"
        " window.surgUppy.getFiles().every(f => f.progress.uploadComplete)",
        timeout=60_000,
    )
    page.screenshot(path=str(artifacts / "upload-complete.png"))
    # Resumed, not restarted: parts 1-3 went up once.
    assert all(puts[f"part-0000{n}"] == 1 for n in (1, 2, 3)), puts
    rows = site.catalog.list_cases()
    assert len(rows) == 1
    case = rows[0]
    assert case.status == "queued" and case.source_key == f"raw-videos/{case.id}/source.mp4"
    assert site.blob_store.get_bytes(case.source_key) == clip.read_bytes()
    page.wait_for_selector(f"#case-rows tr[data-case='{case.id}'][data-status='queued']")

    # The analysis (another issue's Dagster job) leaves a processed video and tables behind.
    site.blob_store.put_file(f"processed-videos/{case.id}/video.mp4", clip)
    write_perception(site.blob_store, case.id, duration_s=4.0)
    site.catalog.update_case(case.id, status="ready", duration_s=4.0, fps=25.0, width=480)
    page.wait_for_selector(f"#case-rows tr[data-case='{case.id}'][data-status='ready']")
    page.click(f"#case-rows a[href='#/case/{case.id}']")

    # Play: the video streams with ranges, the canvas shows boxes for the frame shown.
    page.wait_for_function("() => document.querySelector('#player video')?.readyState >= 2")
    page.wait_for_selector("#phasebar[data-segments='2']")
    assert page.locator("#eventbar .marker").count() == 1
    page.evaluate(
        "() => { const v = document.querySelector('#player video'); v.muted = true; v.play() }"
    )
    page.wait_for_function("() => document.querySelector('#player video').currentTime > 1.0")
    page.evaluate("() => document.querySelector('#player video').pause()")
    page.wait_for_function("() => Number(document.querySelector('#overlay').dataset.boxes) === 2")
    lit = page.evaluate(
        """() => { const c = document.querySelector('#overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n }"""
    )
    assert lit > 500, "no overlay pixels on the canvas"
    assert page.locator("#instruments tr[data-instrument='grasper']").count() == 1
    assert "synthetic cholecystectomy" in page.inner_text("#report")
    page.screenshot(path=str(artifacts / "player.png"))

    # Correct a box on the paused frame: drag the grasper 40 px (video pixels) to the right.
    box = page.evaluate(
        """() => { const p = window.surgPlayer; const b = p.ui.boxes.find(x => x.n === 'grasper');
        const v = document.querySelector('#player video').getBoundingClientRect();
        const el = document.querySelector('#player video'), W = el.videoWidth, H = el.videoHeight;
        const s = Math.min(v.width / W, v.height / H);
        const ox = v.left + (v.width - W * s) / 2, oy = v.top + (v.height - H * s) / 2;
        return {x: ox + (b.b[0] + b.b[2]) / 2 * s, y: oy + (b.b[1] + b.b[3]) / 2 * s, s,
                frame: b.f, x1: b.b[0]} }"""
    )
    page.mouse.move(box["x"], box["y"])
    page.mouse.down()
    page.mouse.move(box["x"] + 20 * box["s"], box["y"], steps=4)
    page.mouse.move(box["x"] + 40 * box["s"], box["y"], steps=4)
    page.mouse.up()
    page.wait_for_selector("#history-rows tr[data-id]")
    with site.catalog.session() as s:
        saved = s.query(Annotation).filter(Annotation.case_id == case.id).all()
    assert len(saved) == 1
    a = saved[0]
    assert (a.source, a.author, a.kind, a.payload["action"]) == ("review", "ada", "box", "modify")
    assert a.payload["target"]["track_id"] == 1 and a.frame_index == box["frame"]
    assert a.payload["box"][0] == pytest.approx(box["x1"] + 40, abs=2)
    # Shown at once: the corrected box is drawn from the stored correction.
    page.wait_for_function(
        "() => window.surgPlayer.ui.boxes.some(b => b.r !== null && b.n === 'grasper')"
    )
    page.screenshot(path=str(artifacts / "corrected.png"))

    # Drag the phase boundary from 2.0 s to about 1.0 s, then relabel the second segment.
    handle = page.locator("#phasebar .handle[data-boundary='1']").bounding_box()
    bar = page.locator("#phasebar").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(bar["x"] + bar["width"] * 0.25, handle["y"] + 5, steps=5)
    page.mouse.up()
    page.wait_for_selector("#history-rows tr:nth-child(2)")
    page.mouse.click(bar["x"] + bar["width"] * 0.75, bar["y"] + bar["height"] / 2)
    page.select_option("#phase-select", "Clipping and cutting")
    page.click("#relabel-phase")
    page.wait_for_selector("#phasebar .seg[data-phase='Clipping and cutting']")
    with site.catalog.session() as s:
        phase_rows = (
            s.query(Annotation)
            .filter(Annotation.case_id == case.id, Annotation.kind == "phase")
            .order_by(Annotation.id)
            .all()
        )
    assert len(phase_rows) == 2 and phase_rows[1].supersedes_id == phase_rows[0].id
    segments = phase_rows[1].payload["segments"]
    assert [x["phase_name"] for x in segments] == ["Preparation", "Clipping and cutting"]
    assert segments[0]["end_s"] == pytest.approx(1.0, abs=0.25)
    assert segments[0]["end_s"] == segments[1]["start_s"]
    page.screenshot(path=str(artifacts / "phases-corrected.png"))

    # Nothing the browser did leaked the file's name, and nothing failed in the page.
    assert not any("Jane" in line for line in _audit(site))
    assert b"Jane" not in (site.home / "catalog.db").read_bytes()
    assert not errors, errors
    context.close()


def _audit(site: WebServer) -> list[str]:
    from resources.audit import AuditLog

    return list(AuditLog(site.catalog).export())
