"""The case analysis: what the perception tables mean for one case, as one JSON document.

``build_analysis`` turns the phases, instrument usage and events tables of a case (DESIGN.md
section 3) plus a few facts about the video into an :class:`Analysis`: the phase timeline and
durations, instrument usage per class (visible time, appearances, first and last use, per phase),
events, the model and dataset versions used, and anomalies measured against the Cholec80
reference statistics committed in ``ml_models/synthetic/cholec80_reference.json``.

The analysis is the only thing the report writers (template or LLM) and the question answerer see:
it holds no frames, no file names and nothing a patient could be identified by.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES, phase_id
from ml_models.tracking import USAGE_GAP_S

ANALYSIS_SCHEMA_VERSION = "1.0"

# Cholec80 phase transitions, counted over the 60 annotated videos of ../shared/data: every
# transition goes forward (phases may be skipped), except "Cleaning and coagulation" ->
# "Gallbladder packaging", seen 3 times. Anything else backwards is worth a surgeon's look.
NORMAL_BACKWARD_TRANSITIONS: frozenset[tuple[int, int]] = frozenset({(5, 4)})

AnomalyKind = Literal[
    "long_phase", "unexpected_phase_order", "unusual_instrument_phase", "long_out_of_body"
]


class _Strict(BaseModel):
    # Unknown fields are a contract violation, not something to carry along silently.
    model_config = ConfigDict(extra="forbid")


class VideoFacts(_Strict):
    """Facts about the normalised video (no file name, no source metadata)."""

    duration_s: float = Field(ge=0)
    width: int | None = None
    height: int | None = None
    fps: float | None = None


class PhaseSegment(_Strict):
    """One stretch of the phase timeline."""

    phase_id: int = Field(ge=0, description="the phase's number in the phase model's vocabulary")
    phase: str
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    duration_s: float = Field(ge=0)
    start: str = Field(description="start as HH:MM:SS", pattern=r"^\d{2}:\d{2}:\d{2}$")
    end: str = Field(description="end as HH:MM:SS", pattern=r"^\d{2}:\d{2}:\d{2}$")
    confidence: float | None = None


class PhaseDuration(_Strict):
    """Total time spent in one phase over the case, with the Cholec80 reference beside it."""

    phase_id: int
    phase: str
    duration_s: float = Field(ge=0)
    segments: int = Field(ge=1)
    first_start_s: float
    last_end_s: float
    reference_median_s: float | None = None


class InstrumentUsage(_Strict):
    """How one instrument class was used over the case."""

    instrument: str
    class_id: int
    visible_s: float = Field(
        ge=0, description="time in use: union over its tracks, short gaps bridged"
    )
    appearances: int = Field(ge=0, description="separate stretches in use, short gaps bridged")
    tracks: int = Field(ge=0)
    first_use_s: float
    last_use_s: float
    first_use: str = Field(pattern=r"^\d{2}:\d{2}:\d{2}$")
    last_use: str = Field(pattern=r"^\d{2}:\d{2}:\d{2}$")
    mean_confidence: float | None = None
    per_phase_s: dict[str, float] = Field(description="visible seconds within each phase")
    intervals: list[tuple[float, float]] = Field(description="stretches in use [start_s, end_s]")


class VideoEvent(_Strict):
    """One detected event (black, colour bars, scene cut, out-of-body, burned-in text)."""

    kind: str
    start_s: float
    end_s: float
    duration_s: float = Field(ge=0)
    start: str = Field(pattern=r"^\d{2}:\d{2}:\d{2}$")
    score: float | None = None


class Anomaly(_Strict):
    """Something a reviewer should look at, with the evidence that raised it."""

    kind: AnomalyKind
    description: str
    start_s: float
    end_s: float
    start: str = Field(pattern=r"^\d{2}:\d{2}:\d{2}$")
    phase: str | None = None
    instrument: str | None = None
    evidence: dict[str, float | int | str] = Field(default_factory=dict)


class Analysis(_Strict):
    """``processed-metadata/{case_id}/analysis.json`` (schema: ``ml_models/schemas``)."""

    schema_version: Literal["1.0"] = ANALYSIS_SCHEMA_VERSION
    case_id: str
    procedure: str
    video: VideoFacts
    phases: list[PhaseSegment]
    phase_durations: list[PhaseDuration]
    instruments: list[InstrumentUsage]
    events: list[VideoEvent]
    event_counts: dict[str, int]
    model_versions: dict[str, str]
    dataset_versions: dict[str, str]
    anomalies: list[Anomaly]
    reference: str = Field(description="where the anomaly reference statistics come from")


@dataclass(frozen=True)
class AnomalyRules:
    """Thresholds of the anomaly detectors.

    Attributes:
        long_phase_z: A phase is "much longer than usual" when its log-duration is this many
            standard deviations above the Cholec80 log-mean (2.0 is about the 98th percentile).
        unusual_presence: An instrument is unusual in a phase when Cholec80 shows it in less
            than this fraction of that phase's frames.
        unusual_min_s: ...and it is visible there for at least this long (one stray frame of a
            weak detector is not a finding).
        long_out_of_body_s: Out-of-body stretches at least this long are reported.
    """

    long_phase_z: float = 2.0
    unusual_presence: float = 0.01
    unusual_min_s: float = 2.0
    long_out_of_body_s: float = 60.0


def hhmmss(seconds: float) -> str:
    """``HH:MM:SS`` of a time in seconds (rounded down to the second, as video players show it)."""
    s = max(0, int(math.floor(seconds + 1e-6)))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


_CLOCK_RE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2})(?:\.\d+)?$")


def parse_clock(text: str) -> float | None:
    """Seconds of ``H:MM:SS``, ``HH:MM:SS`` or ``MM:SS``; ``None`` when not a clock time."""
    m = _CLOCK_RE.match(text.strip())
    if not m:
        return None
    h, mnt, sec = int(m.group(1) or 0), int(m.group(2)), int(m.group(3))
    if sec >= 60 or (m.group(1) is not None and mnt >= 60):
        return None
    return float(h * 3600 + mnt * 60 + sec)


def merge_intervals(
    intervals: list[tuple[float, float]], max_gap_s: float = 0.0
) -> list[tuple[float, float]]:
    """Union of intervals, sorted by start: overlapping or touching ones join, and so do ones
    at most ``max_gap_s`` apart (the gap then counts as covered)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + max_gap_s + 1e-9:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def load_reference() -> dict[str, Any]:
    """The Cholec80 aggregate phase and instrument statistics (committed by the lab)."""
    from ml_models.synthetic.timeline import reference_table

    return reference_table()


def _r(x: float) -> float:
    # Two decimals: tables are sampled at 1-5 fps, more digits would only be noise in a report.
    return round(float(x), 2)


def build_analysis(
    case_id: str,
    phases: pa.Table,
    usage: pa.Table,
    events: pa.Table,
    video: VideoFacts,
    procedure: str = "cholecystectomy",
    model_versions: dict[str, str] | None = None,
    dataset_versions: dict[str, str] | None = None,
    reference: dict[str, Any] | None = None,
    rules: AnomalyRules | None = None,
    usage_gap_s: float = USAGE_GAP_S,
) -> Analysis:
    """Build the case analysis from a case's tables.

    Args:
        case_id: The opaque case id.
        phases: The ``phases`` table (``ml_models.tables.PHASES``).
        usage: The ``instrument_usage`` table (per-track visible intervals).
        events: The ``events`` table.
        video: Duration and size of the normalised video.
        procedure: The catalog's procedure name.
        model_versions: Model versions used (``{"phase_model": "phase_model:v3", ...}``); the
            versions recorded in the tables are added.
        dataset_versions: Dataset version each model was trained on.
        reference: Cholec80 statistics (``load_reference()`` when omitted).
        rules: Anomaly thresholds.
        usage_gap_s: One instrument class seen again within this many seconds (by the same
            track or another) continues the same appearance, and the gap counts as in use. The
            default equals the tracks' own bridging (``ml_models.tracking.USAGE_GAP_S``).

    Returns:
        The validated analysis.
    """
    if not cholec80_phases(phases):
        # Another procedure's phases: Cholec80's durations, order and instruments say nothing
        # about them, so no anomaly is judged against them.
        reference = {"source": f"none: the phases are not Cholec80's ({procedure})"}
    reference = reference or load_reference()
    rules = rules or AnomalyRules()
    versions = dict(model_versions or {})
    for table in (phases, usage):
        if "model_version" in table.column_names:
            for v in sorted({x for x in table.column("model_version").to_pylist() if x}):
                versions.setdefault(v.split(":", 1)[0], v)

    segments = _phase_segments(phases)
    durations = _phase_durations(segments, reference)
    instruments = _instrument_usage(usage, segments, usage_gap_s)
    event_rows = _events(events)
    counts: dict[str, int] = {}
    for e in event_rows:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    anomalies = (
        _long_phases(durations, reference, rules)
        + _phase_order(segments, reference)
        + _unusual_instruments(instruments, segments, reference, rules)
        + _long_out_of_body(event_rows, rules)
    )
    anomalies.sort(key=lambda a: (a.start_s, a.kind))
    return Analysis(
        case_id=case_id,
        procedure=procedure,
        video=video,
        phases=segments,
        phase_durations=durations,
        instruments=instruments,
        events=event_rows,
        event_counts=counts,
        model_versions=versions,
        dataset_versions=dict(dataset_versions or {}),
        anomalies=anomalies,
        reference=str(reference.get("source", "Cholec80 reference statistics")),
    )


def cholec80_phases(phases: pa.Table) -> bool:
    """Whether a phases table speaks Cholec80: every name a Cholec80 phase, at its number."""
    ids, names = phases.column("phase_id").to_pylist(), phases.column("phase_name").to_pylist()
    return all(phase_id(n) == i for i, n in zip(ids, names, strict=True))


def _phase_segments(phases: pa.Table) -> list[PhaseSegment]:
    rows = sorted(phases.to_pylist(), key=lambda r: r["start_s"])
    cholec80 = cholec80_phases(phases)
    out = []
    for r in rows:
        pid = int(r["phase_id"])
        out.append(
            PhaseSegment(
                phase_id=pid,
                # Cholec80 phases in the vocabulary's spelling, whatever the model wrote, so
                # reports are consistent; another procedure's phases as its model names them.
                phase=PHASES[pid] if cholec80 else r["phase_name"],
                start_s=_r(r["start_s"]),
                end_s=_r(r["end_s"]),
                duration_s=_r(r["end_s"] - r["start_s"]),
                start=hhmmss(r["start_s"]),
                end=hhmmss(r["end_s"]),
                confidence=None if r.get("confidence") is None else _r(r["confidence"]),
            )
        )
    return out


def _phase_durations(segments: list[PhaseSegment], reference: dict) -> list[PhaseDuration]:
    ref = {p["id"]: p for p in reference.get("phases", [])}
    by_phase: dict[int, list[PhaseSegment]] = {}
    for s in segments:
        by_phase.setdefault(s.phase_id, []).append(s)
    return [
        PhaseDuration(
            phase_id=pid,
            phase=segs[0].phase,
            duration_s=_r(sum(s.end_s - s.start_s for s in segs)),
            segments=len(segs),
            first_start_s=segs[0].start_s,
            last_end_s=segs[-1].end_s,
            reference_median_s=ref.get(pid, {}).get("median_s"),
        )
        for pid, segs in sorted(by_phase.items())
    ]


def _instrument_usage(
    usage: pa.Table, segments: list[PhaseSegment], gap_s: float
) -> list[InstrumentUsage]:
    by_class: dict[int, list[dict]] = {}
    for r in usage.to_pylist():
        by_class.setdefault(int(r["class_id"]), []).append(r)
    out = []
    for cid, rows in sorted(by_class.items()):
        # Two tracks of the same class at once (a second grasper) count once towards visible
        # time. Tracks are cut where the tool went unseen for a second or so, so an instrument
        # back within the gap is the same appearance, whichever track saw it.
        merged = merge_intervals([(float(r["start_s"]), float(r["end_s"])) for r in rows], gap_s)
        per_phase: dict[str, float] = {}
        for seg in segments:
            t = sum(_overlap(iv, (seg.start_s, seg.end_s)) for iv in merged)
            if t > 0:
                per_phase[seg.phase] = _r(per_phase.get(seg.phase, 0.0) + t)
        n = sum(int(r["detections"]) for r in rows)
        conf = (
            sum(float(r["mean_confidence"]) * int(r["detections"]) for r in rows) / n if n else None
        )
        name = (
            INSTRUMENT_CLASSES[cid] if 0 <= cid < len(INSTRUMENT_CLASSES) else rows[0]["class_name"]
        )
        out.append(
            InstrumentUsage(
                instrument=name,
                class_id=cid,
                visible_s=_r(sum(e - s for s, e in merged)),
                appearances=len(merged),
                tracks=len({r["track_id"] for r in rows}),
                first_use_s=_r(merged[0][0]),
                last_use_s=_r(merged[-1][1]),
                first_use=hhmmss(merged[0][0]),
                last_use=hhmmss(merged[-1][1]),
                mean_confidence=None if conf is None else round(conf, 3),
                per_phase_s=per_phase,
                intervals=[(_r(s), _r(e)) for s, e in merged],
            )
        )
    return out


def _events(events: pa.Table) -> list[VideoEvent]:
    rows = sorted(events.to_pylist(), key=lambda r: (r["start_s"], r["kind"]))
    return [
        VideoEvent(
            kind=r["kind"],
            start_s=_r(r["start_s"]),
            end_s=_r(r["end_s"]),
            duration_s=_r(max(0.0, r["end_s"] - r["start_s"])),
            start=hhmmss(r["start_s"]),
            score=None if r.get("score") is None else _r(r["score"]),
        )
        for r in rows
    ]


def _long_phases(durations: list[PhaseDuration], reference: dict, rules: AnomalyRules) -> list:
    ref = {p["id"]: p for p in reference.get("phases", [])}
    out = []
    for d in durations:
        stats = ref.get(d.phase_id)
        if not stats or d.duration_s <= 0 or not stats.get("log_std"):
            continue
        z = (math.log(d.duration_s) - stats["log_mean"]) / stats["log_std"]
        if z >= rules.long_phase_z:
            out.append(
                Anomaly(
                    kind="long_phase",
                    description=(
                        f"{d.phase} lasted {_fmt_s(d.duration_s)}, much longer than usual "
                        f"(Cholec80 median {_fmt_s(stats['median_s'])})"
                    ),
                    start_s=d.first_start_s,
                    end_s=d.last_end_s,
                    start=hhmmss(d.first_start_s),
                    phase=d.phase,
                    evidence={
                        "duration_s": d.duration_s,
                        "reference_median_s": stats["median_s"],
                        "z_score": round(z, 2),
                    },
                )
            )
    return out


# Evidence values are scalars (the analysis schema), so a list of phases is one joined string.
_PHASE_LIST_SEP = "; "


def skipped_phases(anomaly: Anomaly) -> list[str]:
    """The phases an ``unexpected_phase_order`` anomaly says the case went without."""
    joined = str(anomaly.evidence.get("skipped_phases", ""))
    return [name for name in joined.split(_PHASE_LIST_SEP) if name]


def _phase_order(segments: list[PhaseSegment], reference: dict) -> list:
    # Phases every reference video went through; skipping one of them is unexpected.
    if not reference.get("phases"):
        return []  # no reference procedure: no expected order
    videos = reference.get("videos", 0)
    always = {
        p["id"] for p in reference.get("phases", []) if videos and p["videos_with_phase"] == videos
    }
    out = []
    # A phase done before or after the jump (Cholec80 has 3 -> 5 -> 4) is not skipped.
    visited = {s.phase_id for s in segments}
    for prev, nxt in zip(segments, segments[1:], strict=False):
        a, b = prev.phase_id, nxt.phase_id
        if a == b:
            continue
        skipped = [p for p in range(a + 1, b) if p in always and p not in visited]
        if b < a and (a, b) not in NORMAL_BACKWARD_TRANSITIONS:
            why = f"{nxt.phase} follows {prev.phase}; in Cholec80 it comes before it"
        elif skipped:
            names = ", ".join(PHASES[p] for p in skipped)
            why = f"{nxt.phase} follows {prev.phase} without {names}, which every Cholec80 case has"
        else:
            continue
        out.append(
            Anomaly(
                kind="unexpected_phase_order",
                description=f"unexpected phase order at {nxt.start}: {why}",
                start_s=nxt.start_s,
                end_s=nxt.end_s,
                start=nxt.start,
                phase=nxt.phase,
                # The phases it went without are named by the analysis too, so a report that
                # repeats the anomaly may name them although they are not in the timeline.
                evidence={
                    "from_phase": prev.phase,
                    "to_phase": nxt.phase,
                    "skipped_phases": _PHASE_LIST_SEP.join(PHASES[p] for p in skipped),
                },
            )
        )
    return out


def _unusual_instruments(
    instruments: list[InstrumentUsage],
    segments: list[PhaseSegment],
    reference: dict,
    rules: AnomalyRules,
) -> list:
    presence = {p["name"]: p.get("tool_presence", {}) for p in reference.get("phases", [])}
    out = []
    for inst in instruments:
        for phase, seconds in inst.per_phase_s.items():
            prior = presence.get(phase, {}).get(inst.instrument)
            if prior is None or prior >= rules.unusual_presence or seconds < rules.unusual_min_s:
                continue
            # Where in that phase the instrument first shows: what a reviewer will want to watch.
            first = min(
                max(s, seg.start_s)
                for seg in segments
                if seg.phase == phase
                for s, e in inst.intervals
                if _overlap((s, e), (seg.start_s, seg.end_s)) > 0
            )
            out.append(
                Anomaly(
                    kind="unusual_instrument_phase",
                    description=(
                        f"{inst.instrument} visible for {_fmt_s(seconds)} during {phase}, "
                        + (
                            f"where Cholec80 shows it only {prior:.1%} of the time"
                            if prior >= 0.001
                            else "where Cholec80 never shows it"
                        )
                    ),
                    start_s=first,
                    end_s=first,
                    start=hhmmss(first),
                    phase=phase,
                    instrument=inst.instrument,
                    evidence={"visible_s": seconds, "reference_presence": prior},
                )
            )
    return out


def _long_out_of_body(events: list[VideoEvent], rules: AnomalyRules) -> list:
    return [
        Anomaly(
            kind="long_out_of_body",
            description=(f"camera out of the body for {_fmt_s(e.duration_s)} from {e.start}"),
            start_s=e.start_s,
            end_s=e.end_s,
            start=e.start,
            evidence={"duration_s": e.duration_s, "threshold_s": rules.long_out_of_body_s},
        )
        for e in events
        if e.kind == "out_of_body" and e.duration_s >= rules.long_out_of_body_s
    ]


def _fmt_s(seconds: float) -> str:
    """A duration as people say it: ``45 s``, ``12 min 5 s``, ``1 h 3 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


format_duration = _fmt_s


def join_words(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def state_at(analysis: Analysis, t_s: float) -> dict[str, Any]:
    """What the analysis says about one moment: phase, visible instruments, ongoing events.

    This is what ``GET /api/cases/{id}/at?t=SECONDS`` and ``surg ask`` need.

    Args:
        analysis: The case analysis.
        t_s: Seconds from the start of the video.

    Returns:
        ``{"t_s", "timestamp", "phase", "instruments", "events"}``.
    """
    phase = next((p.phase for p in analysis.phases if p.start_s <= t_s < p.end_s), None)
    if phase is None and analysis.phases and t_s == analysis.phases[-1].end_s:
        phase = analysis.phases[-1].phase
    instruments = [
        i.instrument for i in analysis.instruments if any(s <= t_s < e for s, e in i.intervals)
    ]
    # dict.fromkeys: one mention per kind, in time order (burned-in text comes in pieces).
    events = list(
        dict.fromkeys(
            e.kind
            for e in analysis.events
            if e.start_s <= t_s < e.end_s or (e.start_s == e.end_s and abs(e.start_s - t_s) < 0.5)
        )
    )
    return {
        "t_s": t_s,
        "timestamp": hhmmss(t_s),
        "phase": phase,
        "instruments": instruments,
        "events": events,
    }
