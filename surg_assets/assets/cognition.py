"""Cognition assets: what the perception tables mean for a case (analysis), and its report."""

import io
import json

import dagster as dg
import pyarrow.parquet as pq

from ml_models.analysis import ANALYSIS_SCHEMA_VERSION, Analysis, AnomalyRules, VideoFacts
from ml_models.report import render_html
from ml_models.tracking import USAGE_GAP_S
from resources.blob_store import BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from resources.report_writers import ReportWriter
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    metadata_key,
    phase_timeline,
    read_table,
    video_events,
)
from surg_assets.intake import find_raw_key
from surg_assets.partitions import cases
from surg_assets.retries import CASE_STEP_RETRY_POLICY


def analysis_key(case_id: str) -> str:
    """``processed-metadata/{case_id}/analysis.json``."""
    return metadata_key(case_id, "analysis.json")


def report_key(case_id: str, extension: str = "json") -> str:
    """``processed-metadata/{case_id}/report.json`` (or ``report.html``)."""
    return metadata_key(case_id, f"report.{extension}")


def load_analysis(blob_store: BlobStore, case_id: str) -> Analysis:
    """A case's stored analysis, validated against the model."""
    return Analysis.model_validate_json(blob_store.get_bytes(analysis_key(case_id)))


# Assets whose materialization metadata names the model version they ran.
upstream_models = [instrument_detections.key, phase_timeline.key, video_events.key]


class AnalysisConfig(dg.Config):
    """Anomaly thresholds (see ``ml_models.analysis.AnomalyRules``) and usage bridging."""

    long_phase_z: float = AnomalyRules.long_phase_z
    unusual_presence: float = AnomalyRules.unusual_presence
    unusual_min_s: float = AnomalyRules.unusual_min_s
    long_out_of_body_s: float = AnomalyRules.long_out_of_body_s
    # An instrument class seen again within this many seconds, by any of its tracks, continues
    # the same appearance (ml_models.analysis.build_analysis). On five held-out synthetic cases
    # this brought the appearance count per instrument to within one of the truth, on average
    # (BENCHMARKS.md, "Instrument usage: appearances across tracks").
    usage_gap_s: float = USAGE_GAP_S

    def anomaly_rules(self) -> AnomalyRules:
        """The anomaly thresholds alone."""
        return AnomalyRules(**self.model_dump(exclude={"usage_gap_s"}))


def _table_versions(blob_store: BlobStore, case_id: str, name: str) -> list[str]:
    # Only the one column: a long case's tracks table is large.
    data = blob_store.get_bytes(metadata_key(case_id, name))
    column = pq.read_table(io.BytesIO(data), columns=["model_version"]).column(0)
    return sorted({v for v in column.to_pylist() if v})


def _recorded_model_version(context: dg.AssetExecutionContext, asset: dg.AssetKey) -> str | None:
    """The ``model_version`` metadata of the upstream asset's materialization of this case."""
    try:
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[context.partition_key]),
            limit=1,
            ascending=False,
        )
    except Exception as exc:  # an instance without the event log index: the version is optional
        context.log.warning(f"could not read {asset.to_user_string()} metadata: {exc}")
        return None
    for record in result.records:
        value = record.asset_materialization.metadata.get("model_version")
        if value is not None:
            return str(value.value)
    return None


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[instrument_tracks, phase_timeline, video_events],
    group_name="cognition",
    kinds={"json"},
    description=(
        "Phase durations, instrument usage, events, model versions and anomalies against the "
        "Cholec80 reference: processed-metadata/{case_id}/analysis.json."
    ),
)
def case_analysis(
    context: dg.AssetExecutionContext,
    config: AnalysisConfig,
    blob_store: BlobStore,
    catalog: Catalog,
    registry: ModelRegistry,
) -> dg.MaterializeResult:
    """Build the analysis from the case's tables; point the raw video's metadata at it."""
    from ml_models.analysis import build_analysis

    case_id = context.partition_key
    phases = read_table(blob_store, case_id, "phases.parquet")
    usage = read_table(blob_store, case_id, "instrument_usage.parquet")
    events = read_table(blob_store, case_id, "events.parquet")
    case = catalog.get_case(case_id)
    ends = phases.column("end_s").to_pylist() + events.column("end_s").to_pylist()
    duration = (case.duration_s if case else None) or max(ends, default=0.0)
    video = VideoFacts(
        duration_s=round(float(duration), 3),
        width=case.width if case else None,
        height=case.height if case else None,
        fps=case.fps if case else None,
    )
    versions: dict[str, str] = {}
    # The tables record their model versions, but an empty tracks table records none: the
    # upstream materializations' metadata says which version ran in every case.
    found = _table_versions(blob_store, case_id, "tracks.parquet")
    found += [v for v in phases.column("model_version").to_pylist() if v]
    found += [_recorded_model_version(context, a) for a in upstream_models]
    for v in sorted({v for v in found if v}):
        versions[v.split(":", 1)[0]] = v
    datasets = {}
    for name, full in versions.items():
        number = full.split(":", 1)[-1]
        match = next((m for m in registry.versions(name) if m.version == number), None)
        if match is not None and match.dataset_version:
            datasets[name] = match.dataset_version
    analysis = build_analysis(
        case_id,
        phases,
        usage,
        events,
        video,
        procedure=(case.procedure if case else None) or "cholecystectomy",
        model_versions=versions,
        dataset_versions=datasets,
        rules=config.anomaly_rules(),
        usage_gap_s=config.usage_gap_s,
    )
    key = analysis_key(case_id)
    blob_store.put_bytes(
        key,
        analysis.model_dump_json(indent=1).encode(),
        metadata={"schema_version": ANALYSIS_SCHEMA_VERSION, "content_type": "application/json"},
    )
    raw = find_raw_key(blob_store, case_id)
    if raw is not None:
        # The upload itself says where its analysis is, for tools that only see the bucket.
        blob_store.set_metadata(raw, {"analysis": key})
    else:
        context.log.warning(f"case {case_id}: no raw video to point at the analysis")
    anomalies = [{"kind": a.kind, "at": a.start, "what": a.description} for a in analysis.anomalies]
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "schema_version": ANALYSIS_SCHEMA_VERSION,
            "phases": len(analysis.phase_durations),
            "phase_segments": len(analysis.phases),
            "instruments": len(analysis.instruments),
            "anomalies": len(analysis.anomalies),
            "anomaly_list": dg.MetadataValue.json(anomalies),
            "model_versions": dg.MetadataValue.json(analysis.model_versions),
            "raw_video_pointer": raw or "",
            "phase_durations_s": dg.MetadataValue.json(
                {d.phase: d.duration_s for d in analysis.phase_durations}
            ),
        }
    )


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[case_analysis],
    group_name="cognition",
    kinds={"json", "html"},
    description=(
        "The structured, grounded case report (report.json) and its HTML rendering with the "
        "phase timeline and instrument usage charts (report.html)."
    ),
)
def case_report(
    context: dg.AssetExecutionContext,
    blob_store: BlobStore,
    report_writer: ReportWriter,
) -> dg.MaterializeResult:
    """Write the report with the configured writer (template unless an LLM is configured)."""
    case_id = context.partition_key
    analysis = load_analysis(blob_store, case_id)
    report = report_writer.write(analysis)
    if report.generated_by.fallback_reason:
        context.log.warning(
            f"case {case_id}: the template wrote the report ({report.generated_by.fallback_reason})"
        )
    key = report_key(case_id)
    html_key = report_key(case_id, "html")
    # HTML first: once report.json exists, readers may follow it to report.html.
    blob_store.put_bytes(
        html_key, render_html(report, analysis).encode(), metadata={"content_type": "text/html"}
    )
    blob_store.put_bytes(
        key,
        report.model_dump_json(indent=1).encode(),
        metadata={"schema_version": report.schema_version, "content_type": "application/json"},
    )
    g = report.generated_by
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "html_key": html_key,
            "schema_version": report.schema_version,
            "writer": g.writer,
            "model": g.model or "",
            "attempts": g.attempts,
            "fallback_reason": g.fallback_reason or "",
            "grounded": report.grounding.passed,
            "key_events": len(report.key_events),
            "anomalies_observed": len(report.anomalies_observed),
            "summary": dg.MetadataValue.md(report.procedure_summary),
            "generated_by": dg.MetadataValue.json(json.loads(g.model_dump_json())),
        }
    )
