"""The template report, the grounding check, the HTML rendering and the committed schemas."""

from __future__ import annotations

import base64

import jsonschema
import pytest

from ml_models.report import (
    GeneratedBy,
    ReportContent,
    assemble_report,
    check_grounding,
    render_html,
    template_report,
)
from ml_models.schemas import dumps, generate, load_schema, schema_path
from surg_assets_tests.test_cognition.cases import hand_analysis


def test_the_template_report_validates_and_is_grounded() -> None:
    a = hand_analysis()
    report = assemble_report(
        template_report(a), a, GeneratedBy(writer="template", version="template-1")
    )
    doc = report.model_dump(mode="json")
    jsonschema.validate(doc, load_schema("report"))
    assert report.grounding.passed, report.grounding.problems
    g = report.grounding
    assert g.timestamps_checked > 20 and g.phases_checked > 5 and g.instruments_checked >= 3
    assert doc["schema_version"] == "1.0" and doc["generated_by"]["writer"] == "template"
    summary = report.procedure_summary
    assert "1 min 40 s" in summary and "grasper, hook and clipper" in summary
    assert "longest was Calot triangle dissection (40 s)" in summary
    assert [(k.timestamp, k.description) for k in report.key_events][:3] == [
        ("00:00:00", "Preparation begins"),
        ("00:00:00", "first use of the grasper"),
        ("00:00:02", "first use of the clipper"),
    ]
    assert [x.timestamp for x in report.anomalies_observed] == ["00:00:02", "00:01:10", "00:01:20"]
    assert template_report(a) == template_report(a)  # deterministic


def _content(**changes: object) -> ReportContent:
    base = template_report(hand_analysis()).model_dump()
    base.update(changes)
    return ReportContent.model_validate(base)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"procedure_summary": "The clipper was applied at 00:00:55."}, "time 00:00:55"),
        ({"procedure_summary": "Bleeding was seen at 1:03."}, "time 1:03"),
        (
            {"key_events": [{"timestamp": "00:00:57", "description": "clips applied"}]},
            "key_events[0].timestamp",
        ),
        ({"procedure_summary": "Gallbladder retraction went well."}, "Gallbladder retraction"),
        ({"procedure_summary": "The closure phase was short."}, "'closure'"),
        ({"procedure_summary": "The hook was used in the retraction phase."}, "Gallbladder retr"),
        ({"procedure_summary": "The irrigator was used at 00:00:12."}, "'irrigator'"),
        ({"procedure_summary": "A stapler was used."}, "'stapler'"),
        (
            {"phase_durations": [{"phase": "Preparation", "start": "00:00:00",
                                  "end": "00:00:10", "duration_s": 25.0}]},
            "duration 25.0 s",
        ),
        (
            {"instrument_usage": [{"instrument": "hook", "visible_s": 26.0, "appearances": 3,
                                   "first_use": "00:00:12", "last_use": "00:00:38"}]},
            "3 appearances",
        ),
    ],
)  # fmt: skip
def test_grounding_catches_made_up_statements(change: dict, problem: str) -> None:
    grounding = check_grounding(_content(**change), hand_analysis())
    assert not grounding.passed
    assert any(problem in p for p in grounding.problems), grounding.problems


def test_grounding_accepts_true_statements_in_other_words() -> None:
    text = (
        "The hook was in use from 00:00:12 to 0:38 during the Calot triangle dissection phase; "
        "the longest phase was Calot triangle dissection and clip appliers appeared at 00:00:42 "
        "in the clipping phase; the Calot phase resumed at 00:01:20."
    )
    grounding = check_grounding(_content(procedure_summary=text), hand_analysis())
    assert grounding.passed, grounding.problems


def test_phases_a_case_went_without_are_grounded_only_through_its_anomaly() -> None:
    # Preparation straight to Gallbladder dissection: the analysis says which phases were
    # skipped, so the report may name them; a phase neither in the case nor skipped may not.
    from ml_models.analysis import VideoFacts, build_analysis
    from surg_assets_tests.test_cognition.cases import CASE, events_table, phases_table, usage_table

    a = build_analysis(
        CASE,
        phases_table([(0, 0, 10), (3, 10, 100)]),
        usage_table(),
        events_table(),
        VideoFacts(duration_s=100.0, width=854, height=480, fps=25.0),
    )
    [order] = [x for x in a.anomalies if x.kind == "unexpected_phase_order"]
    assert order.evidence["skipped_phases"] == "Calot triangle dissection; Clipping and cutting"
    report = template_report(a)
    assert any("Clipping and cutting" in x.description for x in report.anomalies_observed)
    assert check_grounding(report, a).passed, check_grounding(report, a).problems
    made_up = report.model_copy(update={"procedure_summary": "Gallbladder retraction was short."})
    assert not check_grounding(made_up, a).passed


def test_the_html_report_shows_both_charts_and_escapes_text() -> None:
    a = hand_analysis()
    content = _content(procedure_summary="Summary with <script>alert(1)</script> in it.")
    report = assemble_report(content, a, GeneratedBy(writer="template", version="t"))
    html = render_html(report, a)
    assert "<script>" not in html and "&lt;script&gt;" in html
    for chart in ("phase-timeline-chart", "instrument-usage-chart"):
        start = html.index(f'id="{chart}"')
        b64 = html[start:].split("base64,", 1)[1].split('"', 1)[0]
        assert base64.b64decode(b64).startswith(b"\x89PNG")
    assert "00:01:20" in html and "Gallbladder packaging" in html
    assert "Grounding check: passed" in html


@pytest.mark.parametrize("name", ["analysis", "report"])
def test_committed_schemas_equal_the_generated_ones(name: str) -> None:
    # Fails after a model change until `python -m ml_models.schemas` is run and committed.
    assert schema_path(name).read_text() == dumps(generate(name))
    assert load_schema(name)["properties"]["schema_version"]["const"] == "1.0"
