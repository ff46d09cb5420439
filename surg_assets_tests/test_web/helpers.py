"""Helpers of the web tests: a scripted uploader and perception outputs of the DESIGN schemas."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ml_models.tables import (
    DETECTIONS,
    EVENTS,
    PHASE_PROBABILITIES,
    PHASES,
    TRACKS,
    table_from_rows,
    to_parquet_bytes,
)


def put_part(url: str, data: bytes) -> httpx.Response:
    """PUT one part to its signed URL (no cookies: the signature is the credential)."""
    return httpx.put(url, content=data, timeout=30)


def upload(
    client: httpx.Client,
    data: bytes,
    name: str = "clip.mp4",
    sha256: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Create an upload, send every part in parallel, complete it; returns the complete reply."""
    r = client.post(
        "/api/uploads", json={"name": name, "size": len(data), "type": "video/mp4", **extra}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    size = created["part_size"]

    def send(p: dict[str, Any]) -> dict[str, Any]:
        n = p["part_number"]
        resp = put_part(p["url"], data[(n - 1) * size : n * size])
        assert resp.status_code == 200, resp.text
        return {"part_number": n, "etag": resp.headers["etag"]}

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(send, reversed(created["part_urls"])))  # out of order on purpose
    body: dict[str, Any] = {"parts": parts}
    if sha256:
        body["sha256"] = hashlib.sha256(data).hexdigest()
    r = client.post(f"/api/uploads/{created['upload_id']}/complete", json=body)
    assert r.status_code == 200, r.text
    return {**r.json(), "created": created}


def boxes(case_id: str, fps: float = 25.0, frames: int = 50) -> list[dict[str, Any]]:
    """Two instruments on every frame: a grasper (track 1) and a hook (track 2) moving right."""
    rows = []
    for f in range(frames):
        t = f / fps
        for track, cls, name, x in ((1, 0, "grasper", 20.0), (2, 2, "hook", 180.0)):
            rows.append(
                {
                    "case_id": case_id,
                    "frame_index": f,
                    "t_s": t,
                    "class_id": cls,
                    "class_name": name,
                    "confidence": 0.9,
                    "x1": x + f,
                    "y1": 60.0,
                    "x2": x + f + 80.0,
                    "y2": 160.0,
                    "mask": [x + f, 60.0, x + f + 80.0, 60.0, x + f + 40.0, 160.0]
                    if track == 1
                    else None,
                    "model_version": "instrument_detector:v1",
                    "track_id": track,
                }
            )
    return rows


def write_perception(
    blob_store: Any,
    case_id: str,
    duration_s: float = 2.0,
    vocabulary: tuple[str, ...] | None = None,
) -> None:
    """Small detections/tracks/phases/events parquet files (DESIGN.md section 3) and a report.

    The timeline is the first two Cholec80 phases; with ``vocabulary`` it is that vocabulary's
    first two, and per-second probabilities over the whole vocabulary are written too (as a
    phase model trained on those names would).
    """
    rows = boxes(case_id, frames=int(duration_s * 25))
    prefix = f"processed-metadata/{case_id}"
    blob_store.put_bytes(
        f"{prefix}/tracks.parquet", to_parquet_bytes(table_from_rows(TRACKS, rows))
    )
    det = [{k: v for k, v in r.items() if k != "track_id"} for r in rows]
    blob_store.put_bytes(
        f"{prefix}/detections.parquet", to_parquet_bytes(table_from_rows(DETECTIONS, det))
    )
    half = duration_s / 2
    names = vocabulary or ("Preparation", "Calot triangle dissection")
    phases = [
        {
            "case_id": case_id,
            "phase_id": 0,
            "phase_name": names[0],
            "start_s": 0.0,
            "end_s": half,
            "confidence": 0.8,
            "model_version": "phase_model:v1",
        },
        {
            "case_id": case_id,
            "phase_id": 1,
            "phase_name": names[1],
            "start_s": half,
            "end_s": duration_s,
            "confidence": 0.7,
            "model_version": "phase_model:v1",
        },
    ]
    blob_store.put_bytes(
        f"{prefix}/phases.parquet", to_parquet_bytes(table_from_rows(PHASES, phases))
    )
    if vocabulary:
        probabilities = [
            {
                "case_id": case_id,
                "t_s": float(t),
                "phase_id": i,
                "phase_name": name,
                "probability": 1.0 if i == (0 if t < half else 1) else 0.0,
            }
            for t in range(int(duration_s))
            for i, name in enumerate(vocabulary)
        ]
        blob_store.put_bytes(
            f"{prefix}/phase_probabilities.parquet",
            to_parquet_bytes(table_from_rows(PHASE_PROBABILITIES, probabilities)),
        )
    events = [
        {
            "case_id": case_id,
            "kind": "out_of_body",
            "start_s": 0.4,
            "end_s": 0.8,
            "score": 0.9,
            "detail": "{}",
        }
    ]
    blob_store.put_bytes(
        f"{prefix}/events.parquet", to_parquet_bytes(table_from_rows(EVENTS, events))
    )
    report = {
        "schema_version": "1.0",
        "procedure_summary": "A short synthetic cholecystectomy.",
        "key_events": [{"timestamp": "00:00:01", "description": "Calot triangle dissection"}],
        "generated_by": "template",
    }
    blob_store.put_bytes(f"{prefix}/report.json", json.dumps(report).encode())
