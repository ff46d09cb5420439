"""The case analysis from hand-written tables: durations, usage, events and anomalies."""

from __future__ import annotations

import base64

import jsonschema
import pytest

from ml_models.analysis import (
    AnomalyRules,
    VideoFacts,
    build_analysis,
    hhmmss,
    merge_intervals,
    parse_clock,
    state_at,
)
from ml_models.schemas import load_schema
from ml_models.tables import EVENTS, INSTRUMENT_USAGE, table_from_rows
from ml_models.tables import PHASES as PHASES_TABLE
from surg_assets_tests.test_cognition.cases import (
    CASE,
    events_table,
    hand_analysis,
    phases_table,
)


def test_phase_timeline_and_durations_are_exact() -> None:
    a = hand_analysis()
    assert [(p.phase_id, p.start_s, p.end_s, p.duration_s) for p in a.phases] == [
        (0, 0, 10, 10), (1, 10, 40, 30), (2, 40, 50, 10), (3, 50, 80, 30), (1, 80, 90, 10),
        (4, 90, 100, 10),
    ]  # fmt: skip
    assert a.phases[3].start == "00:00:50" and a.phases[3].end == "00:01:20"
    durations = {d.phase: (d.duration_s, d.segments) for d in a.phase_durations}
    # Calot triangle dissection: 30 s (10-40) + 10 s (80-90), in two segments.
    assert durations == {
        "Preparation": (10, 1),
        "Calot triangle dissection": (40, 2),
        "Clipping and cutting": (10, 1),
        "Gallbladder dissection": (30, 1),
        "Gallbladder packaging": (10, 1),
    }
    assert a.phase_durations[1].reference_median_s == 970.0
    assert sum(d for d, _ in durations.values()) == a.video.duration_s


def test_instrument_usage_merges_overlapping_tracks_and_splits_by_phase() -> None:
    a = hand_analysis()
    by = {i.instrument: i for i in a.instruments}
    assert list(by) == ["grasper", "hook", "clipper"]  # class id order
    grasper = by["grasper"]
    # Tracks 0-20 and 15-30 overlap: one appearance of 30 s, then 60-70: 40 s over 2.
    assert grasper.visible_s == 40 and grasper.appearances == 2 and grasper.tracks == 3
    assert grasper.intervals == [(0, 30), (60, 70)]
    assert (grasper.first_use_s, grasper.last_use_s) == (0, 70)
    assert (grasper.first_use, grasper.last_use) == ("00:00:00", "00:01:10")
    assert grasper.per_phase_s == {
        "Preparation": 10, "Calot triangle dissection": 20, "Gallbladder dissection": 10
    }  # fmt: skip
    # Detection-weighted confidence: (100*0.8 + 75*0.6 + 50*0.7) / 225.
    assert grasper.mean_confidence == pytest.approx(160 / 225, abs=1e-3)
    clipper = by["clipper"]
    assert (clipper.visible_s, clipper.appearances, clipper.first_use_s) == (10, 2, 2)
    assert clipper.per_phase_s == {"Preparation": 4, "Clipping and cutting": 6}
    assert by["hook"].per_phase_s == {"Calot triangle dissection": 26}


def test_events_and_versions_are_carried_without_details() -> None:
    a = hand_analysis()
    assert a.event_counts == {"black": 1, "scene_cut": 1, "out_of_body": 2}
    assert [(e.kind, e.start_s, e.duration_s) for e in a.events][-1] == ("out_of_body", 70, 8)
    # The events' free-text detail (burned-in text boxes) never enters the analysis.
    assert "never sent" not in a.model_dump_json()
    assert a.model_versions == {
        "out_of_body_model": "out_of_body_model:v1", "phase_model": "phase_model:v2"
    }  # fmt: skip
    assert a.dataset_versions == {"phase_model": "phase-ds:v4"}


def test_anomalies_of_the_hand_written_case() -> None:
    a = hand_analysis()
    found = [(x.kind, x.start_s, x.phase, x.instrument) for x in a.anomalies]
    assert found == [
        ("unusual_instrument_phase", 2, "Preparation", "clipper"),
        ("long_out_of_body", 70, None, None),
        ("unexpected_phase_order", 80, "Calot triangle dissection", None),
    ]
    assert "Gallbladder dissection" in a.anomalies[2].description
    # With the default 60 s threshold an 8 s excursion is not a finding.
    assert "long_out_of_body" not in {x.kind for x in hand_analysis(AnomalyRules()).anomalies}


def _with_phases(spans: list[tuple[int, float, float]]) -> object:
    return build_analysis(
        CASE,
        phases_table(spans),
        INSTRUMENT_USAGE.empty_table(),
        EVENTS.empty_table(),
        VideoFacts(duration_s=spans[-1][2]),
    )


def _usage(rows: list[tuple[int, int, str, float, float]]) -> object:
    return table_from_rows(
        INSTRUMENT_USAGE,
        [
            {"case_id": CASE, "track_id": t, "class_id": c, "class_name": n, "start_s": s,
             "end_s": e, "detections": 10, "mean_confidence": 0.5}
            for t, c, n, s, e in rows
        ],
    )  # fmt: skip


def test_an_instrument_back_within_the_gap_is_one_appearance_whichever_track_saw_it() -> None:
    # The tracker cuts a track after a second unseen, so one grasper hidden for 1.5 s comes
    # back as track 2; a grasper back after 5 s, and the hook between them, stay apart.
    usage = _usage([
        (1, 0, "grasper", 10.0, 20.0), (2, 0, "grasper", 21.5, 30.0),
        (3, 0, "grasper", 35.0, 40.0), (4, 2, "hook", 20.0, 21.0), (5, 2, "hook", 22.9, 24.0),
    ])  # fmt: skip

    def by(gap: float | None) -> dict:
        extra = {} if gap is None else {"usage_gap_s": gap}
        a = build_analysis(
            CASE, phases_table([(1, 0, 50)]), usage, events_table().slice(0, 0),
            VideoFacts(duration_s=50), **extra,
        )  # fmt: skip
        return {i.instrument: i for i in a.instruments}

    default = by(None)  # 2 s, as within a track
    assert default["grasper"].intervals == [(10, 30), (35, 40)]
    assert default["grasper"].appearances == 2 and default["grasper"].tracks == 3
    # The 1.5 s gap counts as in use, as it would have inside one track.
    assert default["grasper"].visible_s == 25
    assert default["grasper"].per_phase_s == {"Calot triangle dissection": 25}
    assert default["hook"].intervals == [(20, 24)] and default["hook"].appearances == 1
    # Gap 0: only overlapping or touching intervals join.
    apart = by(0.0)
    assert apart["grasper"].intervals == [(10, 20), (21.5, 30), (35, 40)]
    assert apart["grasper"].visible_s == 23.5 and apart["hook"].appearances == 2
    # A gap longer than the threshold is never bridged, whatever the threshold's rounding.
    assert by(1.4)["grasper"].appearances == 3 and by(1.8)["hook"].appearances == 2
    assert merge_intervals([(0, 1), (3, 4)], max_gap_s=2.0) == [(0, 4)]
    assert merge_intervals([(0, 1), (3.01, 4)], max_gap_s=2.0) == [(0, 1), (3.01, 4)]


def test_a_phase_much_longer_than_cholec80_is_flagged() -> None:
    # Preparation: Cholec80 log-mean 4.859, log-sd 0.2925 -> z = 2 at about 231 s.
    a = _with_phases([(0, 0, 400), (1, 400, 1300)])
    assert [(x.kind, x.phase) for x in a.anomalies] == [("long_phase", "Preparation")]
    assert a.anomalies[0].evidence["reference_median_s"] == 138.0
    assert a.anomalies[0].evidence["z_score"] == pytest.approx(3.87, abs=0.01)
    assert not _with_phases([(0, 0, 200), (1, 200, 1100)]).anomalies


def test_phase_order_rules_follow_cholec80_transitions() -> None:
    # 5 -> 4 happens in Cholec80; skipping Preparation (0) or Cleaning (5) is normal too.
    normal = [(1, 0, 10), (2, 10, 20), (3, 20, 30), (5, 30, 40), (4, 40, 50), (6, 50, 60)]
    assert not _with_phases(normal).anomalies
    skipped = _with_phases([(1, 0, 10), (3, 10, 20), (4, 20, 30)])
    assert [(x.kind, x.start_s) for x in skipped.anomalies] == [("unexpected_phase_order", 10)]
    assert "without Clipping and cutting" in skipped.anomalies[0].description


def test_state_at_and_time_helpers() -> None:
    a = hand_analysis()
    assert state_at(a, 16) == {
        "t_s": 16, "timestamp": "00:00:16", "phase": "Calot triangle dissection",
        "instruments": ["grasper", "hook"], "events": [],
    }  # fmt: skip
    assert state_at(a, 71)["events"] == ["out_of_body"]
    assert hhmmss(3725.9) == "01:02:05" and parse_clock("15:30") == 930
    assert parse_clock("1:02:05") == 3725 and parse_clock("15:75") is None
    assert merge_intervals([(5, 6), (0, 2), (2, 3)]) == [(0, 3), (5, 6)]


def test_the_analysis_validates_against_the_committed_schema() -> None:
    doc = hand_analysis().model_dump(mode="json")
    jsonschema.validate(doc, load_schema("analysis"))
    doc["phases"][0]["start"] = "0:00"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema("analysis"))


def test_an_empty_case_still_has_an_analysis() -> None:
    a = build_analysis(
        CASE,
        phases_table([(0, 0, 5)]),
        INSTRUMENT_USAGE.empty_table(),
        events_table().slice(0, 0),
        VideoFacts(duration_s=5),
    )
    assert a.instruments == [] and a.events == [] and a.anomalies == []


def test_the_contract_check_finds_inconsistent_analyses() -> None:
    from surg_assets.checks_cognition import analysis_problems

    doc = hand_analysis().model_dump(mode="json")
    assert analysis_problems(doc) == []
    doc["phases"][1]["start_s"] = 5.0  # overlaps Preparation (0-10)
    doc["phase_durations"][0]["duration_s"] = 12.0
    problems = analysis_problems(doc)
    assert "phases overlap at 00:00:10" in problems
    assert "Preparation: duration 12.0 s, its segments sum to 10.0" in problems
    doc["instruments"][0]["visible_s"] = -1
    assert any(p.startswith("instruments/0/visible_s") for p in analysis_problems(doc))


def test_another_procedures_phases_keep_their_names_and_meet_no_cholec80_reference() -> None:
    from ml_models.report import phase_timeline_png

    # A POEM phase model (peroral endoscopic myotomy, the POEMNet steps) numbering its own
    # phases: a "tunnel" that runs 30 min is not a Cholec80 phase that ran long, an order of
    # steps that would be backwards in Cholec80 is not unexpected, and a clipper is not unusual.
    steps = ["submuc_inject", "muc_incis", "tunnel", "myotomy", "mucos_close"]
    spans = [(0, 0, 60), (2, 60, 1800), (1, 1800, 1900), (3, 1900, 2500), (4, 2500, 2600)]
    phases = table_from_rows(
        PHASES_TABLE,
        [
            {"case_id": CASE, "phase_id": p, "phase_name": steps[p], "start_s": s, "end_s": e,
             "confidence": 0.8, "model_version": "phase_model:v7"}
            for p, s, e in spans
        ],
    )  # fmt: skip
    usage = _usage([(1, 4, "clipper", 100.0, 400.0)])
    a = build_analysis(
        CASE, phases, usage, EVENTS.empty_table(), VideoFacts(duration_s=2600),
        procedure="poem",
    )  # fmt: skip
    assert [(p.phase_id, p.phase) for p in a.phases] == [(p, steps[p]) for p, _, _ in spans]
    assert {d.phase: d.duration_s for d in a.phase_durations}["tunnel"] == 1740
    assert all(d.reference_median_s is None for d in a.phase_durations)
    assert a.anomalies == [] and a.reference == "none: the phases are not Cholec80's (poem)"
    assert a.instruments[0].per_phase_s == {"tunnel": 300.0}
    jsonschema.validate(a.model_dump(mode="json"), load_schema("analysis"))
    # The same spans under Cholec80's names are judged against Cholec80.
    cholec = _with_phases(spans)
    assert {x.kind for x in cholec.anomalies} >= {"long_phase", "unexpected_phase_order"}
    # Nine phases: the timeline's palette repeats instead of running out.
    nine = [(i, i * 10.0, i * 10.0 + 10) for i in range(9)]
    many = table_from_rows(
        PHASES_TABLE,
        [
            {"case_id": CASE, "phase_id": p, "phase_name": f"step {p}", "start_s": s, "end_s": e,
             "confidence": 0.8, "model_version": "phase_model:v8"}
            for p, s, e in nine
        ],
    )  # fmt: skip
    b = build_analysis(
        CASE, many, INSTRUMENT_USAGE.empty_table(), EVENTS.empty_table(), VideoFacts(duration_s=90)
    )
    assert [p.phase for p in b.phases][-1] == "step 8"
    assert len(base64.b64decode(phase_timeline_png(b))) > 1000
