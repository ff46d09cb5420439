"""Asset checks of the cognition assets: schema contracts and grounding, blocking."""

import json

import dagster as dg
import jsonschema

from ml_models.analysis import Analysis
from ml_models.report import check_grounding
from ml_models.schemas import load_schema
from resources.blob_store import BlobStore
from surg_assets.assets.cognition import analysis_key, case_analysis, case_report, report_key


def _schema_problems(doc: object, name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(name))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))[:10]
    ]


def analysis_problems(doc: dict) -> list[str]:
    """Why an analysis document breaks its contract (empty when it meets it)."""
    problems = _schema_problems(doc, "analysis")
    if problems:
        return problems
    a = Analysis.model_validate(doc)
    end = a.video.duration_s + 1.0
    for p in a.phases:
        if p.end_s < p.start_s or p.end_s > end:
            problems.append(f"phase {p.phase} {p.start}-{p.end} is outside the video")
    for prev, nxt in zip(a.phases, a.phases[1:], strict=False):
        if nxt.start_s < prev.end_s - 1e-6:
            problems.append(f"phases overlap at {nxt.start}")
    for d in a.phase_durations:
        total = sum(p.duration_s for p in a.phases if p.phase_id == d.phase_id)
        if abs(total - d.duration_s) > 0.05:
            problems.append(f"{d.phase}: duration {d.duration_s} s, its segments sum to {total}")
    for i in a.instruments:
        if i.visible_s > a.video.duration_s + 1.0 or i.last_use_s > end:
            problems.append(f"{i.instrument}: usage beyond the end of the video")
    return problems


@dg.asset_check(
    asset=case_analysis,
    blocking=True,
    description="analysis.json validates against ml_models/schemas/analysis.schema.json and is "
    "self-consistent (phases inside the video and ordered, durations adding up).",
)
def analysis_meets_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore
) -> dg.AssetCheckResult:
    """Re-read the stored analysis and check it."""
    case_id = context.op_execution_context.partition_key
    doc = json.loads(blob_store.get_bytes(analysis_key(case_id)))
    problems = analysis_problems(doc)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "analysis meets the schema",
        metadata={"schema_version": doc.get("schema_version", "")},
    )


@dg.asset_check(
    asset=case_report,
    blocking=True,
    description="report.json validates against ml_models/schemas/report.schema.json, and every "
    "timestamp, phase and instrument it names exists in the case's analysis.",
)
def report_is_valid_and_grounded(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore
) -> dg.AssetCheckResult:
    """Validate the stored report and re-run the grounding check against the stored analysis."""
    case_id = context.op_execution_context.partition_key
    doc = json.loads(blob_store.get_bytes(report_key(case_id)))
    problems = _schema_problems(doc, "report")
    grounded = False
    if not problems:
        analysis = Analysis.model_validate_json(blob_store.get_bytes(analysis_key(case_id)))
        grounding = check_grounding(doc, analysis)
        grounded = grounding.passed
        problems += [f"ungrounded: {p}" for p in grounding.problems]
        if doc["grounding"]["passed"] != grounding.passed:
            problems.append("the stored grounding result does not match a fresh check")
    html = blob_store.get_bytes(report_key(case_id, "html")).decode()
    for chart in ("phase-timeline-chart", "instrument-usage-chart"):
        if f'id="{chart}"' not in html:
            problems.append(f"report.html lacks the {chart}")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems[:10]) or "report meets the schema and is grounded",
        metadata={"grounded": grounded, "writer": doc.get("generated_by", {}).get("writer", "")},
    )
