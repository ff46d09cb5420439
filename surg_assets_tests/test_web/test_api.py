"""The review API over HTTP against a real uvicorn server, SQLite catalog and folder lake."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from ml_models.formats.cholec80 import PHASES as CHOLEC80_PHASES
from resources.audit import AuditLog
from surg_assets_tests.test_web.conftest import PASSWORD, WebServer
from surg_assets_tests.test_web.helpers import put_part, upload, write_perception

KiB = 1024


def payload(n: int, seed: int = 1) -> bytes:
    """``n`` deterministic bytes (the upload service does not look inside)."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (n // len(block) + 1))[:n]


# -- authentication --------------------------------------------------------------------------


def test_every_api_route_but_login_and_health_needs_a_session(web: WebServer) -> None:
    spec = httpx.get(f"{web.url}/openapi.json").json()
    checked = 0
    for path, ops in spec["paths"].items():
        if not path.startswith("/api") or path in ("/api/health", "/api/auth/login"):
            continue
        url = web.url + re.sub(r"\{[^}]+\}", "1", path)
        for method in ops:
            for headers in (
                {},
                {"Cookie": "surg_session=forged"},
                {"Authorization": "Bearer surg_forged"},
            ):
                r = httpx.request(method.upper(), url, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert set(r.json()) == {"error"}
                checked += 1
    assert checked >= 40
    assert httpx.get(f"{web.url}/api/health").json() == {"status": "ok"}


def test_login_sets_a_strict_httponly_cookie_and_failures_are_audited(web: WebServer) -> None:
    bad = httpx.post(f"{web.url}/api/auth/login", json={"name": "sam", "password": "nope"})
    assert bad.status_code == 401 and bad.json() == {"error": "the user name or password is wrong."}
    r = httpx.post(f"{web.url}/api/auth/login", json={"name": "sam", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["role"] == "surgeon"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here; TLS turns it on
    assert (
        r.headers["x-frame-options"] == "DENY"
        and "default-src 'self'" in r.headers["content-security-policy"]
    )
    logins = [e for e in AuditLog(web.catalog).entries() if e.action == "login"]
    assert ("sam", "failed") in {(e.actor, e.outcome) for e in logins}
    assert ("sam", "ok") in {(e.actor, e.outcome) for e in logins}


def test_cookie_requests_need_the_csrf_token_and_bearer_tokens_do_not(web: WebServer) -> None:
    c = web.client("sam")
    token = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/tokens", json={"label": "ci"})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
    r = c.post("/api/tokens", json={"label": "ci"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 201
    bearer = r.json()["token"]
    script = httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {bearer}"})
    assert script.get("/api/auth/me").json()["name"] == "sam"
    assert script.post("/api/tokens", json={"label": "second"}).status_code == 201
    assert script.delete(f"/api/tokens/{r.json()['id']}").status_code == 200
    assert script.get("/api/auth/me").status_code == 401  # revoked
    assert c.post("/api/auth/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert c.get("/api/auth/me").status_code == 401


def test_bad_requests_get_one_clear_json_error(web: WebServer) -> None:
    c = web.client("sam")
    r = c.post("/api/uploads", json={"name": "a.mp4", "size": "big"})
    assert r.status_code == 422 and r.json()["error"].startswith("size:")
    r = c.post("/api/uploads", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and set(r.json()) == {"error"}
    r = c.post("/api/uploads", json={"name": "a" * 2_000_000 + ".mp4", "size": 10})
    assert r.status_code == 413 and set(r.json()) == {"error"}
    assert c.get("/api/nothing-here").status_code == 404


# -- uploads ---------------------------------------------------------------------------------


def test_a_resumable_upload_lands_in_raw_videos_and_queues_the_case(web: WebServer) -> None:
    c = web.client("sam")
    data = payload(300 * KiB + 123)
    r = c.post("/api/uploads", json={"name": "Patient Jane Doe 1970.MOV", "size": len(data)})
    assert r.status_code == 201
    up = r.json()
    assert up["part_count"] == 5 and up["part_size"] == 64 * KiB
    assert "Jane" not in r.text
    # Send two parts, "lose the connection", then resume from the server's list of parts.
    size = up["part_size"]
    etags = {}
    for p in up["part_urls"][:2]:
        n = p["part_number"]
        etags[n] = put_part(p["url"], data[(n - 1) * size : n * size]).headers["etag"]
    state = c.get(f"/api/uploads/{up['upload_id']}").json()
    assert [p["part_number"] for p in state["parts"]] == [1, 2]
    assert [p["etag"] for p in state["parts"]] == [etags[1], etags[2]]
    assert state["missing"] == [3, 4, 5]
    assert web.catalog.get_case(up["case_id"]).status == "uploading"
    for p in state["part_urls"]:
        n = p["part_number"]
        etags[n] = put_part(p["url"], data[(n - 1) * size : n * size]).headers["etag"]
    parts = [{"part_number": n, "etag": e} for n, e in sorted(etags.items())]
    done = c.post(
        f"/api/uploads/{up['upload_id']}/complete",
        json={"parts": parts, "sha256": hashlib.sha256(data).hexdigest()},
    )
    assert done.status_code == 200 and done.json()["status"] == "queued"
    key = f"raw-videos/{up['case_id']}/source.mp4"
    assert web.blob_store.get_bytes(key) == data
    assert web.blob_store.list_prefix(f"uploads-staging/{up['upload_id']}/") == []
    case = web.catalog.get_case(up["case_id"])
    assert (case.status, case.source_key, case.owner) == ("queued", key, "sam")
    again = c.post(f"/api/uploads/{up['upload_id']}/complete", json={"parts": parts})
    assert again.status_code == 409
    # The file's name is nowhere: not in the lake, the catalog, or the audit log.
    lake = Path(web.blob_store.root)
    assert not any("Jane" in p.as_posix() for p in lake.rglob("*"))
    assert b"Jane" not in Path(web.home / "catalog.db").read_bytes()
    assert not any("Jane" in line for line in AuditLog(web.catalog).export())


def test_hostile_upload_requests_are_refused(web: WebServer) -> None:
    c = web.client("sam")
    for name in ("../../etc/passwd.mp4", "a\x00b.mp4", "x" * 300 + ".mp4", "notes.exe", ""):
        r = c.post("/api/uploads", json={"name": name or " ", "size": 10})
        assert r.status_code in (400, 422), name
        assert "passwd" not in r.text and "notes" not in r.text
    assert c.post("/api/uploads", json={"name": "a.mp4", "size": -1}).status_code == 422
    assert c.post("/api/uploads", json={"name": "a.mp4", "size": 10**15}).status_code == 400
    assert (
        c.post("/api/uploads", json={"name": "a.mp4", "size": 9, "type": "text/html"})
        .json()["error"]
        .startswith("the upload's type")
    )
    assert web.blob_store.list_prefix("raw-videos/") == [] or all(
        "passwd" not in i.key for i in web.blob_store.list_prefix("")
    )

    data = payload(200 * KiB, seed=2)
    up = c.post("/api/uploads", json={"name": "b.mp4", "size": len(data)}).json()
    uid, size, urls = up["upload_id"], up["part_size"], up["part_urls"]
    assert c.get(f"/api/uploads/{uid}/parts/99").status_code == 400  # no part 99
    # Forged and expired signatures; a signature for another part.
    url1 = urls[0]["url"]
    assert (
        put_part(re.sub(r"signature=[^&]+", "signature=AAAA", url1), data[:size]).status_code == 401
    )
    expired = re.sub(r"expires=\d+", f"expires={int(time.time()) - 10}", url1)
    assert put_part(expired, data[:size]).status_code == 401
    assert put_part(url1.replace("part-00001", "part-00002"), data[:size]).status_code == 401
    # A part over its size, a part under it.
    assert put_part(url1, data[: size + 1]).status_code == 413
    assert put_part(url1, data[: size - 1]).status_code == 400
    etags = {}
    for p in urls:
        n = p["part_number"]
        etags[n] = put_part(p["url"], data[(n - 1) * size : n * size]).headers["etag"]
    complete = f"/api/uploads/{uid}/complete"
    wrong = [{"part_number": n, "etag": '"0000"'} for n in etags]
    assert "ETag differs" in c.post(complete, json={"parts": wrong}).json()["error"]
    missing = [{"part_number": n, "etag": e} for n, e in etags.items() if n != 2]
    assert "missing" in c.post(complete, json={"parts": missing}).json()["error"]
    repeated = [{"part_number": 1, "etag": etags[1]}] * 2
    assert "repeated" in c.post(complete, json={"parts": repeated}).json()["error"]
    good = [{"part_number": n, "etag": e} for n, e in etags.items()]
    bad_sha = c.post(complete, json={"parts": good, "sha256": "0" * 64})
    assert bad_sha.status_code == 400 and "sha256" in bad_sha.json()["error"]
    case = web.catalog.get_case(up["case_id"])
    assert case.status == "failed" and not web.blob_store.exists(f"raw-videos/{case.id}/source.mp4")
    # Another user cannot see or touch someone else's upload.
    other = web.client("sue")
    assert other.get(f"/api/uploads/{uid}").status_code == 404
    assert (
        web.client("rey").post("/api/uploads", json={"name": "c.mp4", "size": 5}).status_code == 403
    )


def test_an_aborted_upload_leaves_nothing_behind(web: WebServer) -> None:
    c = web.client("sam")
    data = payload(130 * KiB, seed=3)
    up = c.post("/api/uploads", json={"name": "c.mkv", "size": len(data)}).json()
    put_part(up["part_urls"][0]["url"], data[: up["part_size"]])
    assert web.blob_store.list_prefix(f"uploads-staging/{up['upload_id']}/")
    assert c.delete(f"/api/uploads/{up['upload_id']}").status_code == 200
    assert web.blob_store.list_prefix(f"uploads-staging/{up['upload_id']}/") == []
    assert web.catalog.get_case(up["case_id"]) is None
    assert c.get(f"/api/uploads/{up['upload_id']}").status_code == 404
    assert put_part(up["part_urls"][1]["url"], data[: up["part_size"]]).status_code == 404


# -- cases, access control, the player's data -----------------------------------------------


@pytest.fixture(scope="module")
def ready_case(web: WebServer, videos: dict) -> str:
    """A case uploaded by sam, 'analysed': processed video and perception outputs in place."""
    data = videos["good"].read_bytes()
    case_id = upload(web.client("sam"), data, name="good.mp4")["case_id"]
    web.blob_store.put_bytes(f"processed-videos/{case_id}/video.mp4", data)
    write_perception(web.blob_store, case_id, duration_s=2.0)
    web.catalog.update_case(case_id, status="ready", duration_s=3.0, fps=25.0, width=320)
    return case_id


def test_surgeons_see_their_own_and_shared_cases_only(web: WebServer, ready_case: str) -> None:
    sam, sue = web.client("sam"), web.client("sue")
    assert ready_case in [c["id"] for c in sam.get("/api/cases").json()]
    assert ready_case not in [c["id"] for c in sue.get("/api/cases").json()]
    for path in ("", "/video", "/timeline", "/overlays", "/instruments", "/report"):
        assert sue.get(f"/api/cases/{ready_case}{path}").status_code == 404
    assert sue.post(f"/api/cases/{ready_case}/shares", json={"user": "sue"}).status_code == 404
    assert sam.post(f"/api/cases/{ready_case}/shares", json={"user": "sue"}).status_code == 201
    assert sue.get(f"/api/cases/{ready_case}").json()["shared_with"] == ["sue"]
    for user in ("rey", "dan", "ada"):
        assert web.client(user).get(f"/api/cases/{ready_case}").status_code == 200
    denied = [
        e
        for e in AuditLog(web.catalog).entries()
        if e.actor == "sue" and e.case_id == ready_case and e.outcome == "denied"
    ]
    assert {e.action for e in denied} >= {"case.view", "video.stream", "overlays.read"}


def test_case_list_filters(web: WebServer, ready_case: str) -> None:
    c = web.client("ada")
    ids = lambda **q: [x["id"] for x in c.get("/api/cases", params=q).json()]  # noqa: E731
    assert ready_case in ids(status="ready", instrument="hook", q=ready_case[3:9])
    assert ready_case not in ids(instrument="clipper")
    assert ready_case in ids(phase="Preparation", min_phase_s=0.5, max_phase_s=1.5)
    assert ready_case not in ids(phase="Preparation", min_phase_s=5)
    assert ready_case not in ids(created_to="2000-01-01")
    assert c.get("/api/cases", params={"status": "bogus"}).status_code == 422
    row = next(x for x in c.get("/api/cases").json() if x["id"] == ready_case)
    assert row["phase_durations_s"] == {"Preparation": 1.0, "Calot triangle dissection": 1.0}


def test_video_streams_with_ranges_and_prefers_the_deidentified_one(
    web: WebServer, ready_case: str, videos: dict
) -> None:
    c = web.client("rey")
    data = videos["good"].read_bytes()
    whole = c.get(f"/api/cases/{ready_case}/video")
    assert whole.status_code == 200 and whole.content == data
    part = c.get(f"/api/cases/{ready_case}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = c.get(f"/api/cases/{ready_case}/video", headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]
    bad = c.get(f"/api/cases/{ready_case}/video", headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    web.blob_store.put_bytes(f"processed-videos/{ready_case}/deidentified.mp4", b"deid" * 10)
    try:
        assert c.get(f"/api/cases/{ready_case}/video").content == b"deid" * 10
    finally:
        web.blob_store.delete(f"processed-videos/{ready_case}/deidentified.mp4")
    streams = [e for e in AuditLog(web.catalog).entries() if e.action == "video.stream"]
    assert any(e.actor == "rey" and e.case_id == ready_case for e in streams)


def test_player_data_overlays_timeline_instruments_report(web: WebServer, ready_case: str) -> None:
    c = web.client("rey")
    ov = c.get(f"/api/cases/{ready_case}/overlays", params={"from_s": 0, "to_s": 0.5}).json()
    assert ov["source"] == "tracks"
    assert {b["f"] for b in ov["boxes"]} == set(range(13))
    first = [b for b in ov["boxes"] if b["f"] == 0]
    assert [(b["n"], b["k"]) for b in first] == [("grasper", 1), ("hook", 2)]
    assert first[0]["m"] and first[1]["m"] is None and first[0]["b"] == [20.0, 60.0, 100.0, 160.0]
    assert c.get(f"/api/cases/{ready_case}/overlays?from_s=5&to_s=1").status_code == 400
    tl = c.get(f"/api/cases/{ready_case}/timeline").json()
    assert [p["phase_name"] for p in tl["phases"]] == ["Preparation", "Calot triangle dissection"]
    assert tl["phase_source"] == "model" and tl["events"][0]["kind"] == "out_of_body"
    usage = c.get(f"/api/cases/{ready_case}/instruments").json()
    assert {k["class_name"]: k["tracks"] for k in usage["classes"]} == {"grasper": 1, "hook": 1}
    assert usage["classes"][0]["visible_s"] == pytest.approx(1.96)
    rep = c.get(f"/api/cases/{ready_case}/report").json()
    assert rep["report"]["key_events"][0]["timestamp"] == "00:00:01" and rep["analysis"] is None


def test_reviewers_correct_boxes_and_phases_as_versioned_annotations(
    web: WebServer, ready_case: str
) -> None:
    rey = web.client("rey")
    url = f"/api/cases/{ready_case}/annotations"
    move = {
        "kind": "box",
        "frame_index": 3,
        "t_s": 0.12,
        "payload": {
            "action": "modify",
            "box": [30, 70, 90, 150],
            "class_id": 3,
            "class_name": "scissors",
            "track_id": 2,
            "target": {"frame_index": 3, "track_id": 2},
        },
    }
    # Surgeons and data scientists may look but not correct.
    assert web.client("sam").post(url, json=move).status_code == 403
    assert web.client("dan").post(url, json=move).status_code == 403
    r = rey.post(url, json=move)
    assert r.status_code == 201
    first = r.json()
    assert (first["author"], first["source"]) == ("rey", "review")
    frame3 = [
        b
        for b in rey.get(f"/api/cases/{ready_case}/overlays?from_s=0&to_s=1").json()["boxes"]
        if b["f"] == 3
    ]
    assert sorted((b["n"], b["r"]) for b in frame3) == [
        ("grasper", None),
        ("scissors", first["id"]),
    ]
    # A second version supersedes the first; the first cannot be superseded twice.
    delete = {**move, "payload": {"action": "delete", "target": {"frame_index": 3, "track_id": 2}}}
    second = rey.post(url, json={**delete, "supersedes_id": first["id"]})
    assert second.status_code == 201
    assert rey.post(url, json={**delete, "supersedes_id": first["id"]}).status_code == 409
    frame3 = [
        b
        for b in rey.get(f"/api/cases/{ready_case}/overlays?from_s=0&to_s=1").json()["boxes"]
        if b["f"] == 3
    ]
    assert [b["n"] for b in frame3] == ["grasper"]
    add = {
        "kind": "box",
        "frame_index": 4,
        "t_s": 0.16,
        "payload": {"action": "add", "box": [1, 2, 30, 40], "class_id": 4, "class_name": "clipper"},
    }
    assert rey.post(url, json=add).status_code == 201
    bad_box = {**add, "payload": {**add["payload"], "box": [30, 2, 1, 40]}}
    assert rey.post(url, json=bad_box).status_code == 422
    phases = {
        "kind": "phase",
        "payload": {
            "segments": [
                {"phase_name": "Preparation", "start_s": 0, "end_s": 0.7},
                {"phase_name": "Clipping and cutting", "start_s": 0.7, "end_s": 2.0},
            ]
        },
    }
    assert rey.post(url, json=phases).status_code == 201
    segments = [
        {"phase_name": "A", "start_s": 0, "end_s": 1},
        {"phase_name": "B", "start_s": 0.5, "end_s": 2},
    ]
    overlap = {"kind": "phase", "payload": {"segments": segments}}
    assert rey.post(url, json=overlap).status_code == 422
    tl = rey.get(f"/api/cases/{ready_case}/timeline").json()
    assert tl["phase_source"] == "review"
    assert [p["phase_name"] for p in tl["phases"]] == ["Preparation", "Clipping and cutting"]
    history = rey.get(url).json()
    assert [(a["kind"], a["current"]) for a in history] == [
        ("box", False),
        ("box", True),
        ("box", True),
        ("phase", True),
    ]
    saved = [e for e in AuditLog(web.catalog).entries() if e.action == "annotation.saved"]
    assert len(saved) == 4 and {e.case_id for e in saved} == {ready_case}


POEM = ("submuc_inject", "tunnel", "myotomy", "closure")


def test_phase_corrections_use_the_case_s_own_phases(
    web: WebServer, ready_case: str, videos: dict
) -> None:
    rey = web.client("rey")
    # A Cholec80 timeline offers all seven phases, not only the two it shows.
    tl = rey.get(f"/api/cases/{ready_case}/timeline").json()
    assert [p["phase_name"] for p in tl["phase_vocabulary"]] == list(CHOLEC80_PHASES)
    assert [p["phase_id"] for p in tl["phase_vocabulary"]] == list(range(7))

    # A case read by a phase model trained on POEM's steps is corrected in those steps.
    data = videos["good"].read_bytes()
    poem = upload(web.client("sam"), data, name="poem.mp4")["case_id"]
    web.blob_store.put_bytes(f"processed-videos/{poem}/video.mp4", data)
    write_perception(web.blob_store, poem, duration_s=4.0, vocabulary=POEM)
    web.catalog.update_case(poem, status="ready", duration_s=4.0, fps=25.0, width=320)
    tl = rey.get(f"/api/cases/{poem}/timeline").json()
    assert [(p["phase_id"], p["phase_name"]) for p in tl["phase_vocabulary"]] == list(
        enumerate(POEM)
    )
    assert [p["phase_name"] for p in tl["phases"]] == ["submuc_inject", "tunnel"]

    def correct(case_id: str, *segments: dict[str, Any]) -> httpx.Response:
        body = {"kind": "phase", "payload": {"segments": list(segments)}}
        return rey.post(f"/api/cases/{case_id}/annotations", json=body)

    # The stored correction carries each phase's id, filled in from the vocabulary.
    r = correct(
        poem,
        {"phase_name": "submuc_inject", "start_s": 0, "end_s": 1.5},
        {"phase_name": "myotomy", "start_s": 1.5, "end_s": 4.0},
    )
    assert r.status_code == 201, r.text
    assert [(s["phase_id"], s["phase_name"]) for s in r.json()["payload"]["segments"]] == [
        (0, "submuc_inject"),
        (2, "myotomy"),
    ]
    # A name the case's model does not know, or an id that disagrees with the name, is refused
    # with one error naming the phase, and nothing is stored.
    before = len(rey.get(f"/api/cases/{poem}/annotations").json())
    r = correct(poem, {"phase_name": "Preparation", "start_s": 0, "end_s": 4.0})
    assert r.status_code == 422 and set(r.json()) == {"error"}
    assert "'Preparation' is not one of this case's phases" in r.json()["error"]
    assert "submuc_inject, tunnel, myotomy, closure" in r.json()["error"]
    r = correct(poem, {"phase_id": 1, "phase_name": "myotomy", "start_s": 0, "end_s": 4.0})
    assert r.status_code == 422 and "'myotomy' has id 2, not 1" in r.json()["error"]
    r = correct(ready_case, {"phase_name": "tunnel", "start_s": 0, "end_s": 2.0})
    assert r.status_code == 422 and "'tunnel'" in r.json()["error"]
    assert len(rey.get(f"/api/cases/{poem}/annotations").json()) == before


def test_data_scientists_approve_and_reject_model_versions(web: WebServer) -> None:
    from resources.catalog import ModelVersion

    with web.catalog.session() as s:
        s.add(ModelVersion(name="phase_model", version="v7", uri="models/phase_model/v7",
                           metrics={"accuracy": 0.91}))  # fmt: skip
        s.add(ModelVersion(name="phase_model", version="v8", uri="models/phase_model/v8"))
    dan = web.client("dan")
    rows = {m["version"]: m for m in dan.get("/api/models").json()}
    assert rows["v7"]["metrics"] == {"accuracy": 0.91} and rows["v7"]["status"] == "Pending"
    assert web.client("rey").get("/api/models").status_code == 403
    r = dan.post(f"/api/models/{rows['v7']['id']}/decision", json={"decision": "Approved"})
    assert r.status_code == 200 and (r.json()["status"], r.json()["decided_by"]) == (
        "Approved",
        "dan",
    )
    no_reason = dan.post(f"/api/models/{rows['v8']['id']}/decision", json={"decision": "Rejected"})
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["error"]
    r = dan.post(
        f"/api/models/{rows['v8']['id']}/decision",
        json={"decision": "Rejected", "reason": "worse on the hold-out set"},
    )
    assert r.json()["reason"] == "worse on the hold-out set"
    assert dan.post("/api/models/9999/decision", json={"decision": "Approved"}).status_code == 404
    actions = [(e.actor, e.action) for e in AuditLog(web.catalog).entries()]
    assert ("dan", "model.approve") in actions and ("dan", "model.reject") in actions


def test_the_audit_chain_of_everything_above_is_intact(web: WebServer) -> None:
    result = AuditLog(web.catalog).verify()
    assert result.ok and result.entries > 50
    db = sqlite3.connect(web.home / "catalog.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 1")
    db.close()


def test_what_happens_at_a_moment(web: WebServer, ready_case: str) -> None:
    from surg_assets_tests.test_cognition.cases import hand_analysis

    c = web.client("rey")
    assert c.get(f"/api/cases/{ready_case}/at", params={"t": 12}).status_code == 404
    web.blob_store.put_bytes(
        f"processed-metadata/{ready_case}/analysis.json",
        hand_analysis().model_dump_json().encode(),
    )
    # Hand-written case: at 31 s Calot triangle dissection, the hook in use, out of body.
    at = c.get(f"/api/cases/{ready_case}/at", params={"t": 31}).json()
    assert at["timestamp"] == "00:00:31"
    assert at["phase"] == "Calot triangle dissection"
    assert "hook" in json.dumps(at["instruments"]) and "out_of_body" in json.dumps(at["events"])
    assert c.get(f"/api/cases/{ready_case}/at", params={"t": -1}).status_code == 422
    assert web.client(None).get(f"/api/cases/{ready_case}/at?t=1").status_code == 401
    web.blob_store.delete(f"processed-metadata/{ready_case}/analysis.json")


def test_a_track_carried_through_two_classes_is_its_majority_class(tmp_path: Path) -> None:
    # A tracker may keep one id across detections of different classes; the panel names the
    # track as the pipeline's usage table does (the class most of its detections have).
    from ml_models.tables import TRACKS, table_from_rows, to_parquet_bytes
    from resources.blob_store import LocalBlobStore
    from surg_assets_tests.test_web.helpers import boxes
    from surg_web.perception import instrument_usage

    store = LocalBlobStore(root=str(tmp_path / "lake"))
    rows = [r for r in boxes("c1", frames=10) if r["track_id"] == 2]
    for r in rows[:3]:  # its first three detections were taken for an irrigator
        r["class_id"], r["class_name"] = 5, "irrigator"
    table = table_from_rows(TRACKS, rows)
    store.put_bytes("processed-metadata/c1/tracks.parquet", to_parquet_bytes(table))
    usage = instrument_usage(store, "c1")
    assert [t["class_name"] for t in usage["tracks"]] == ["hook"]
    assert [c["class_name"] for c in usage["classes"]] == ["hook"]


def _one_grasper_on_three_tracks(store: Any) -> pa.Table:
    """One grasper seen by track 1 (0-1.96 s), lost for 1.5 s, back as track 3 (3.5-5.46 s),
    then again as track 4 after 5 s unseen; stored as case c1's tracks table."""
    from ml_models.tables import TRACKS, table_from_rows, to_parquet_bytes
    from surg_assets_tests.test_web.helpers import boxes

    first = [r for r in boxes("c1") if r["track_id"] == 1]
    rows = list(first)
    for track, shift in ((3, 3.5), (4, 10.46)):
        rows += [{**r, "track_id": track, "t_s": r["t_s"] + shift} for r in first]
    table = table_from_rows(TRACKS, rows)
    store.put_bytes("processed-metadata/c1/tracks.parquet", to_parquet_bytes(table))
    return table


def test_the_panel_bridges_a_short_gap_between_tracks_as_the_report_does(tmp_path: Path) -> None:
    # Two stretches in use, as the analysis says.
    from ml_models.analysis import VideoFacts, build_analysis
    from ml_models.tables import EVENTS, table_from_rows
    from ml_models.tracking import usage_intervals
    from resources.blob_store import LocalBlobStore
    from surg_assets_tests.test_cognition.cases import phases_table
    from surg_web.perception import instrument_usage

    store = LocalBlobStore(root=str(tmp_path / "lake"))
    table = _one_grasper_on_three_tracks(store)
    panel = instrument_usage(store, "c1")["classes"]
    assert [c["class_name"] for c in panel] == ["grasper"]
    assert [tuple(x) for x in panel[0]["intervals"]] == [
        pytest.approx((0.0, 5.46)),
        pytest.approx((10.46, 12.42)),
    ]
    assert panel[0]["visible_s"] == pytest.approx(7.42) and panel[0]["tracks"] == 3
    analysis = build_analysis(
        "c1", phases_table([(1, 0, 13)]), usage_intervals(table, 25.0),
        table_from_rows(EVENTS, []), VideoFacts(duration_s=13),
    )  # fmt: skip
    # The analysis ends each stretch one sample later (25 fps here), otherwise the same.
    assert analysis.instruments[0].appearances == len(panel[0]["intervals"]) == 2
    assert [s for s, _ in analysis.instruments[0].intervals] == [0.0, 10.46]


def test_the_panel_shows_the_reports_stretches_when_the_report_exists(tmp_path: Path) -> None:
    # case_analysis configured with usage_gap_s=6: the 5 s gap before track 4 is bridged in the
    # report, and the panel (which alone would bridge 2 s) shows the report's one stretch.
    from ml_models.analysis import VideoFacts, build_analysis
    from ml_models.tables import EVENTS, table_from_rows
    from ml_models.tracking import usage_intervals
    from resources.blob_store import LocalBlobStore
    from surg_assets_tests.test_cognition.cases import phases_table
    from surg_web.perception import instrument_usage

    store = LocalBlobStore(root=str(tmp_path / "lake"))
    table = _one_grasper_on_three_tracks(store)
    assert len(instrument_usage(store, "c1")["classes"][0]["intervals"]) == 2
    analysis = build_analysis(
        "c1", phases_table([(1, 0, 13)]), usage_intervals(table, 25.0),
        table_from_rows(EVENTS, []), VideoFacts(duration_s=13), usage_gap_s=6.0,
    )  # fmt: skip
    store.put_bytes("processed-metadata/c1/analysis.json", analysis.model_dump_json().encode())
    grasper = instrument_usage(store, "c1")["classes"][0]
    reported = analysis.instruments[0]
    assert reported.appearances == 1
    assert [tuple(x) for x in grasper["intervals"]] == [tuple(x) for x in reported.intervals]
    assert grasper["visible_s"] == pytest.approx(reported.visible_s, abs=0.01)
    assert grasper["tracks"] == 3  # the per-track rows still come from the tracks table
