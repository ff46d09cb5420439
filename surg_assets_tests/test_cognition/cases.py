"""A hand-written case (tables and the analysis built from them) shared by the cognition tests.

100 s of video. Phases: Preparation 0-10, Calot triangle dissection 10-40, Clipping and cutting
40-50, Gallbladder dissection 50-80, Calot triangle dissection again 80-90 (a return to an
earlier phase), Gallbladder packaging 90-100. Instruments: grasper tracks 0-20 and 15-30 (one
appearance, 0-30) and 60-70; clipper 2-6 (in Preparation: unusual) and 42-48; hook 12-38.
Events: black 0-1, scene cut at 1, out-of-body 30-33 and 70-78.
"""

from __future__ import annotations

from typing import Any

from ml_models.analysis import Analysis, AnomalyRules, VideoFacts, build_analysis
from ml_models.report import template_report
from ml_models.tables import EVENTS, INSTRUMENT_USAGE, PHASES, table_from_rows

CASE = "c0123456789abcdef"


def phases_table(spans: list[tuple[int, float, float]]) -> object:
    """A phases table from (phase_id, start, end)."""
    from ml_models.formats.cholec80 import PHASES as NAMES

    return table_from_rows(
        PHASES,
        [
            {"case_id": CASE, "phase_id": p, "phase_name": NAMES[p], "start_s": s, "end_s": e,
             "confidence": 0.9, "model_version": "phase_model:v2"}
            for p, s, e in spans
        ],
    )  # fmt: skip


PHASE_SPANS = [(0, 0, 10), (1, 10, 40), (2, 40, 50), (3, 50, 80), (1, 80, 90), (4, 90, 100)]

USAGE_ROWS = [
    # track, class_id, class_name, start, end, detections, mean confidence
    (1, 0, "grasper", 0.0, 20.0, 100, 0.8),
    (2, 0, "grasper", 15.0, 30.0, 75, 0.6),
    (3, 0, "grasper", 60.0, 70.0, 50, 0.7),
    (5, 4, "clipper", 2.0, 6.0, 20, 0.5),
    (4, 4, "clipper", 42.0, 48.0, 30, 0.9),
    (6, 2, "hook", 12.0, 38.0, 130, 0.75),
]

EVENT_ROWS = [
    ("black", 0.0, 1.0),
    ("scene_cut", 1.0, 1.0),
    ("out_of_body", 30.0, 33.0),
    ("out_of_body", 70.0, 78.0),
]


def usage_table() -> object:
    """The instrument_usage table of the hand-written case."""
    return table_from_rows(
        INSTRUMENT_USAGE,
        [
            {"case_id": CASE, "track_id": t, "class_id": c, "class_name": n, "start_s": s,
             "end_s": e, "detections": d, "mean_confidence": m}
            for t, c, n, s, e, d, m in USAGE_ROWS
        ],
    )  # fmt: skip


def events_table() -> object:
    """The events table of the hand-written case."""
    return table_from_rows(
        EVENTS,
        [
            {"case_id": CASE, "kind": k, "start_s": s, "end_s": e, "score": 1.0,
             "detail": '{"text": "never sent anywhere"}'}
            for k, s, e in EVENT_ROWS
        ],
    )  # fmt: skip


def hand_analysis(rules: AnomalyRules | None = None) -> Analysis:
    """The analysis of the hand-written case (out-of-body threshold 5 s unless ``rules``)."""
    return build_analysis(
        CASE,
        phases_table(PHASE_SPANS),
        usage_table(),
        events_table(),
        VideoFacts(duration_s=100.0, width=854, height=480, fps=25.0),
        model_versions={"out_of_body_model": "out_of_body_model:v1"},
        dataset_versions={"phase_model": "phase-ds:v4"},
        rules=rules or AnomalyRules(long_out_of_body_s=5.0),
    )


LLM_SUMMARY = (
    "Cholecystectomy of 1 min 40 s. Calot triangle dissection (from 00:00:10) was interrupted "
    "by Gallbladder dissection and resumed at 00:01:20; the clipper appeared early, at 00:00:02."
)


def llm_report(**changes: Any) -> dict[str, Any]:
    """What a good model returns: the facts, in its own words."""
    content = template_report(hand_analysis()).model_dump(mode="json")
    content["procedure_summary"] = LLM_SUMMARY
    content.update(changes)
    return content
