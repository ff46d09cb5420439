"""The analysis, report and answers of a perfect perception: the synthetic ground truth itself.

The tiny models of the end-to-end test are too weak to say whether the cognition layer states
durations and first uses correctly, so here the perception tables are built from the synthetic
generator's ground truth (through the project's own usage-interval code) and every statement is
checked against that truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_models.analysis import VideoFacts, build_analysis, hhmmss
from ml_models.answers import answer
from ml_models.formats.cholec80 import PHASES
from ml_models.report import check_grounding, template_report
from ml_models.tables import EVENTS, TRACKS, table_from_rows
from ml_models.tables import PHASES as PHASES_SCHEMA
from ml_models.tracking import usage_intervals

FPS = 25


@pytest.fixture(scope="module")
def truth(synthetic_case: Path) -> dict:
    """Ground truth of the synthetic case, and the tables a perfect perception would write."""
    summary = json.loads((synthetic_case / "summary.json").read_text())
    frames = [
        json.loads(x) for x in (synthetic_case / "ground_truth.jsonl").read_text().splitlines()
    ]
    phases = table_from_rows(
        PHASES_SCHEMA,
        [
            {"case_id": "c1", "phase_id": p["phase_id"], "phase_name": p["phase"],
             "start_s": p["start_frame"] / FPS, "end_s": p["end_frame"] / FPS,
             "confidence": 1.0, "model_version": "truth:v0"}
            for p in summary["phases"]
        ],
    )  # fmt: skip
    tracks = table_from_rows(
        TRACKS,
        [
            {"case_id": "c1", "frame_index": f["frame_index"], "t_s": f["t_s"],
             "class_id": i["class_id"], "class_name": i["class_name"], "confidence": 1.0,
             "x1": i["box"][0], "y1": i["box"][1], "x2": i["box"][2], "y2": i["box"][3],
             "mask": None, "model_version": "truth:v0", "track_id": i["track_id"]}
            for f in frames
            for i in f["instruments"]
        ],
    )  # fmt: skip
    events = table_from_rows(
        EVENTS,
        [
            {"case_id": "c1", "kind": e["kind"], "start_s": e["start_s"], "end_s": e["end_s"],
             "score": 1.0, "detail": e["detail"]}
            for e in json.loads((synthetic_case / "events.json").read_text())["events"]
            if e["kind"] in ("black", "colour_bars", "scene_cut", "out_of_body", "burned_in_text")
        ],
    )  # fmt: skip
    # Bridging gaps would add time the truth does not have: bridge nothing (one frame apart).
    usage = usage_intervals(tracks, FPS, max_gap_s=1.5 / FPS)
    analysis = build_analysis(
        "c1",
        phases,
        usage,
        events,
        VideoFacts(duration_s=summary["duration_s"]),
        usage_gap_s=1.5 / FPS,
    )
    visible: dict[str, list[float]] = {}
    for f in frames:
        for name in sorted({i["class_name"] for i in f["instruments"]}):
            visible.setdefault(name, []).append(f["t_s"])
    return {"summary": summary, "frames": frames, "analysis": analysis, "visible": visible}


def test_phase_durations_equal_the_truth(truth: dict) -> None:
    a = truth["analysis"]
    expected = {p["phase"]: (p["end_frame"] - p["start_frame"]) / FPS
                for p in truth["summary"]["phases"]}  # fmt: skip
    assert {d.phase: d.duration_s for d in a.phase_durations} == pytest.approx(expected, abs=0.01)
    report = template_report(a)
    for row, p in zip(report.phase_durations, truth["summary"]["phases"], strict=True):
        assert (row.phase, row.start) == (p["phase"], hhmmss(p["start_frame"] / FPS))


def test_instrument_usage_equals_the_truth(truth: dict) -> None:
    a = truth["analysis"]
    assert {i.instrument for i in a.instruments} == set(truth["visible"])
    for inst in a.instruments:
        times = truth["visible"][inst.instrument]
        # One 25 fps frame of tolerance per appearance (intervals end one frame after).
        assert inst.visible_s == pytest.approx(len(times) / FPS, abs=0.05 * inst.appearances)
        assert inst.first_use_s == pytest.approx(times[0], abs=0.01)
        assert inst.last_use_s == pytest.approx(times[-1] + 1 / FPS, abs=0.01)


def test_report_and_answers_state_the_truth(truth: dict) -> None:
    a = truth["analysis"]
    report = template_report(a)
    assert check_grounding(report, a).passed
    assert "24 s" in report.procedure_summary
    # Every phase start is a key event at the true time.
    starts = {(k.timestamp, k.description) for k in report.key_events}
    for p in truth["summary"]["phases"]:
        assert (hhmmss(p["start_frame"] / FPS), f"{p['phase']} begins") in starts
    calot = next(p for p in truth["summary"]["phases"] if p["phase_id"] == 1)
    reply = answer("how long was the Calot triangle dissection?", a)
    assert hhmmss(calot["start_frame"] / FPS) in reply.text
    assert f"lasted {round((calot['end_frame'] - calot['start_frame']) / FPS)} s" in reply.text
    hook_first = truth["visible"]["hook"][0]
    reply = answer("When was the hook first used?", a)
    assert reply.citations[0] == hhmmss(hook_first)
    # A whole second (questions name whole seconds) with two instruments in view.
    busy = next(
        f for f in truth["frames"] if f["frame_index"] % FPS == 0 and len(f["instruments"]) >= 2
    )
    reply = answer(f"which instruments at {hhmmss(busy['t_s'])}?", a)
    named = " and ".join(sorted(i["class_name"].replace("_", " ") for i in busy["instruments"]))
    assert f"the {named} are visible" in reply.text or all(
        i["class_name"].replace("_", " ") in reply.text for i in busy["instruments"]
    )
    assert f"during {PHASES[busy['phase_id']]}" in reply.text
