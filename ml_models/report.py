"""The case report: its schema, the offline template writer, the grounding check, and HTML.

A report is what a surgeon reads: a procedure summary, key events with ``HH:MM:SS`` timestamps,
phase durations, instrument usage statistics and the anomalies observed. Any writer (the template
here, or an LLM behind ``resources.report_writers``) produces a :class:`ReportContent`; the
grounding check then verifies that every timestamp, phase and instrument the text names exists in
the analysis it was written from, so a report can never state something the video did not show.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ml_models.analysis import (
    Analysis,
    format_duration,
    hhmmss,
    join_words,
    parse_clock,
    skipped_phases,
)
from ml_models.answers import find_phases
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, OFFICIAL_PHASE_NAMES, PHASES

REPORT_SCHEMA_VERSION = "1.0"
TIMESTAMP_PATTERN = r"^\d{2}:\d{2}:\d{2}$"
# A stated time may differ from an analysis time by rounding (HH:MM:SS drops the fraction).
TIMESTAMP_TOLERANCE_S = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyEvent(_Strict):
    """A moment worth watching."""

    timestamp: str = Field(pattern=TIMESTAMP_PATTERN, description="HH:MM:SS from video start")
    description: str


class PhaseDurationRow(_Strict):
    """One phase of the case and how long it took."""

    phase: str
    start: str = Field(pattern=TIMESTAMP_PATTERN)
    end: str = Field(pattern=TIMESTAMP_PATTERN)
    duration_s: float


class InstrumentStat(_Strict):
    """Usage statistics of one instrument class."""

    instrument: str
    visible_s: float
    appearances: int
    first_use: str = Field(pattern=TIMESTAMP_PATTERN)
    last_use: str = Field(pattern=TIMESTAMP_PATTERN)


class AnomalyObserved(_Strict):
    """An anomaly, in words, with where to find it."""

    timestamp: str = Field(pattern=TIMESTAMP_PATTERN)
    description: str


class ReportContent(_Strict):
    """What a writer produces (and the JSON Schema an LLM is asked to follow).

    Every field is required and no others are allowed, which is what OpenAI's strict structured
    output and Bedrock's tool input schemas need.
    """

    procedure_summary: str
    key_events: list[KeyEvent]
    phase_durations: list[PhaseDurationRow]
    instrument_usage: list[InstrumentStat]
    anomalies_observed: list[AnomalyObserved]


class GeneratedBy(_Strict):
    """Which writer produced the text, and why the template stood in if it did."""

    writer: Literal["template", "openai_compatible", "bedrock"]
    model: str | None = None
    version: str = Field(description="writer version (template) or model id (LLM)")
    attempts: int = Field(ge=0, default=0, description="LLM calls made")
    fallback_reason: str | None = None


class Grounding(_Strict):
    """The result of the grounding check."""

    passed: bool
    timestamps_checked: int = 0
    phases_checked: int = 0
    instruments_checked: int = 0
    problems: list[str] = Field(default_factory=list)


class Report(ReportContent):
    """``processed-metadata/{case_id}/report.json`` (schema: ``ml_models/schemas``)."""

    schema_version: Literal["1.0"] = REPORT_SCHEMA_VERSION
    case_id: str
    analysis_schema_version: str
    generated_by: GeneratedBy
    grounding: Grounding


TEMPLATE_VERSION = "template-1"


# -- the template writer ---------------------------------------------------------------------


def _spoken(instrument: str) -> str:
    """``specimen bag`` for ``specimen_bag``: prose, not identifiers."""
    return instrument.replace("_", " ")


def template_report(analysis: Analysis) -> ReportContent:
    """Clear, deterministic clinical prose from the analysis (the offline default writer).

    Args:
        analysis: The case analysis.

    Returns:
        The report content; grounded by construction (every time and name comes from the analysis).
    """
    a = analysis
    sentences = [f"Laparoscopic {a.procedure} video of {format_duration(a.video.duration_s)}."]
    if a.phases:
        order = []
        for p in a.phases:
            if not order or order[-1] != p.phase:
                order.append(p.phase)
        if len(a.phase_durations) == 1:
            sentences.append(f"One surgical phase was recognised: {order[0]}.")
        else:
            longest = max(a.phase_durations, key=lambda d: d.duration_s)
            sentences.append(
                f"{len(a.phase_durations)} distinct surgical phases were recognised, in this "
                f"order: {', '.join(order)}."
            )
            sentences.append(
                f"The longest was {longest.phase} ({format_duration(longest.duration_s)})."
            )
    else:
        sentences.append("No surgical phase was recognised.")
    if a.instruments:
        most = max(a.instruments, key=lambda i: i.visible_s)
        names = join_words([_spoken(i.instrument) for i in a.instruments])
        sentences.append(
            f"Instruments seen: {names}; the {_spoken(most.instrument)} was visible longest "
            f"({format_duration(most.visible_s)} over {most.appearances} appearance"
            f"{'s' if most.appearances != 1 else ''})."
        )
    else:
        sentences.append("No instrument was detected.")
    oob = [e for e in a.events if e.kind == "out_of_body"]
    if oob:
        total = sum(e.duration_s for e in oob)
        sentences.append(
            f"The camera was outside the body {len(oob)} time{'s' if len(oob) != 1 else ''} "
            f"({format_duration(total)} in all)."
        )
    if a.anomalies:
        sentences.append(
            f"{len(a.anomalies)} finding{'s' if len(a.anomalies) != 1 else ''} "
            "deserve review (see anomalies)."
        )
    else:
        sentences.append("No anomaly against the Cholec80 reference was found.")

    key_events: list[tuple[float, str]] = []
    prev = None
    for p in a.phases:
        if p.phase != prev:
            key_events.append((p.start_s, f"{p.phase} begins"))
        prev = p.phase
    for i in a.instruments:
        key_events.append((i.first_use_s, f"first use of the {_spoken(i.instrument)}"))
    for e in oob:
        key_events.append(
            (e.start_s, f"camera leaves the body for {format_duration(e.duration_s)}")
        )
    for an in a.anomalies:
        key_events.append((an.start_s, f"anomaly: {an.description}"))
    key_events.sort(key=lambda x: x[0])
    return ReportContent(
        procedure_summary=" ".join(sentences),
        key_events=[KeyEvent(timestamp=hhmmss(t), description=d) for t, d in key_events],
        phase_durations=[
            PhaseDurationRow(phase=p.phase, start=p.start, end=p.end, duration_s=p.duration_s)
            for p in a.phases
        ],
        instrument_usage=[
            InstrumentStat(
                instrument=i.instrument,
                visible_s=i.visible_s,
                appearances=i.appearances,
                first_use=i.first_use,
                last_use=i.last_use,
            )
            for i in a.instruments
        ],
        anomalies_observed=[
            AnomalyObserved(timestamp=an.start, description=an.description) for an in a.anomalies
        ],
    )


# -- grounding -------------------------------------------------------------------------------

TIME_RE = re.compile(r"(?<![\d:.])(\d{1,2}:\d{2}(?::\d{2})?)(?![\d:])")
# Instruments a model might invent for a cholecystectomy that our detector does not know.
_FOREIGN_INSTRUMENTS = (
    "scalpel",
    "stapler",
    "retractor",
    "trocar",
    "forceps",
    "needle driver",
    "needle holder",
    "suction",
    "harmonic",
    "ligasure",
    "endoloop",
    "morcellator",
    "suture",
    "dissector",
    "electrocautery",
)
# Words that may stand before "phase" without naming one ("the longest phase").
_PHASE_QUALIFIERS = frozenset(
    {
        "first", "last", "next", "previous", "same", "longest", "shortest", "final", "each",
        "every", "other", "current", "whole", "entire", "unusual", "expected", "unexpected",
        "following", "preceding", "second", "third", "recognised", "recognized", "one", "this",
        "that", "any", "surgical",
    }
)  # fmt: skip
_PHASE_MENTION_RE = re.compile(
    r"\b(?:the|a|an)\s+([A-Za-z][\w-]*(?:\s+[\w-]+){0,3}?)\s+phase\b", re.IGNORECASE
)


def _instrument_aliases() -> dict[str, str]:
    aliases = {}
    for name in INSTRUMENT_CLASSES:
        spoken = name.replace("_", " ")
        aliases[spoken] = name
        aliases[spoken + "s"] = name
        aliases[name] = name
    aliases["clip applier"] = "clipper"
    aliases["clip appliers"] = "clipper"
    return aliases


_INSTRUMENT_ALIASES = _instrument_aliases()
_INSTRUMENT_RE = re.compile(
    r"\b("
    + "|".join(re.escape(k) for k in sorted(_INSTRUMENT_ALIASES, key=len, reverse=True))
    + r")\b",
    re.IGNORECASE,
)
_FOREIGN_RE = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in _FOREIGN_INSTRUMENTS) + r")s?\b", re.IGNORECASE
)
_PHASE_NAMES = {p.lower(): p for p in PHASES}
_PHASE_NAMES.update({o.lower(): p for o, p in zip(OFFICIAL_PHASE_NAMES, PHASES, strict=True)})
_PHASE_RE = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(_PHASE_NAMES, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def known_times(analysis: Analysis) -> list[float]:
    """Every time point the analysis states (phase, instrument, event and anomaly boundaries)."""
    a = analysis
    times = [0.0, a.video.duration_s]
    for p in a.phases:
        times += [p.start_s, p.end_s]
    for i in a.instruments:
        times += [i.first_use_s, i.last_use_s]
        for s, e in i.intervals:
            times += [s, e]
    for e in a.events:
        times += [e.start_s, e.end_s]
    for an in a.anomalies:
        times += [an.start_s, an.end_s]
    return sorted(set(times))


def _texts(content: ReportContent) -> list[tuple[str, str]]:
    """(where, text) of every free-text field, for error messages that say where."""
    out = [("procedure_summary", content.procedure_summary)]
    out += [(f"key_events[{n}]", e.description) for n, e in enumerate(content.key_events)]
    out += [
        (f"anomalies_observed[{n}]", a.description)
        for n, a in enumerate(content.anomalies_observed)
    ]
    return out


def check_grounding(content: ReportContent | dict, analysis: Analysis) -> Grounding:
    """Verify every timestamp, phase and instrument in a report exists in the analysis.

    Timestamps (structured fields and ``MM:SS``/``HH:MM:SS`` in the text) must be within one
    second of a time the analysis states; phase names must be phases of this case; instrument
    names must be instruments seen in this case, and instruments outside the Cholec80 vocabulary
    (a "stapler") are never grounded. Durations and counts in the structured rows must match.

    Args:
        content: A report (or its content) as a model or a dict.
        analysis: The analysis the report was written from.

    Returns:
        The grounding result; ``problems`` lists each ungrounded mention and where it is.
    """
    if isinstance(content, dict):
        content = ReportContent.model_validate(
            {k: content[k] for k in ReportContent.model_fields if k in content}
        )
    a = analysis
    times = known_times(a)
    # Phases the case went without are named by its order anomalies: a report may repeat them.
    case_phases = {p.phase for p in a.phases} | {
        name for an in a.anomalies for name in skipped_phases(an)
    }
    case_instruments = {i.instrument: i for i in a.instruments}
    phase_rows = {(p.phase, p.start, p.end): p for p in a.phases}
    problems: list[str] = []
    n_times = n_phases = n_instruments = 0

    def check_time(where: str, stamp: str) -> None:
        nonlocal n_times
        n_times += 1
        t = parse_clock(stamp)
        if t is None:
            problems.append(f"{where}: {stamp!r} is not a time")
        elif not any(abs(t - k) <= TIMESTAMP_TOLERANCE_S for k in times):
            problems.append(f"{where}: time {stamp} is not in the analysis")

    def check_phase(where: str, name: str) -> None:
        nonlocal n_phases
        n_phases += 1
        canonical = _PHASE_NAMES.get(name.lower())
        if canonical not in case_phases:
            problems.append(f"{where}: phase {name!r} is not in this case's timeline")

    def check_instrument(where: str, name: str) -> None:
        nonlocal n_instruments
        n_instruments += 1
        canonical = _INSTRUMENT_ALIASES.get(name.lower(), name.lower())
        if canonical not in case_instruments:
            problems.append(f"{where}: instrument {name!r} was not seen in this case")

    for n, e in enumerate(content.key_events):
        check_time(f"key_events[{n}].timestamp", e.timestamp)
    for n, an in enumerate(content.anomalies_observed):
        check_time(f"anomalies_observed[{n}].timestamp", an.timestamp)
    for n, row in enumerate(content.phase_durations):
        where = f"phase_durations[{n}]"
        check_phase(where, row.phase)
        check_time(where + ".start", row.start)
        check_time(where + ".end", row.end)
        seg = phase_rows.get((_PHASE_NAMES.get(row.phase.lower(), row.phase), row.start, row.end))
        if seg is not None and abs(seg.duration_s - row.duration_s) > TIMESTAMP_TOLERANCE_S:
            problems.append(
                f"{where}: duration {row.duration_s} s, the analysis says {seg.duration_s} s"
            )
    for n, stat in enumerate(content.instrument_usage):
        where = f"instrument_usage[{n}]"
        check_instrument(where, stat.instrument)
        check_time(where + ".first_use", stat.first_use)
        check_time(where + ".last_use", stat.last_use)
        known = case_instruments.get(_INSTRUMENT_ALIASES.get(stat.instrument.lower(), ""))
        if known is not None and (
            abs(known.visible_s - stat.visible_s) > TIMESTAMP_TOLERANCE_S
            or known.appearances != stat.appearances
        ):
            problems.append(
                f"{where}: {stat.visible_s} s over {stat.appearances} appearances, the analysis "
                f"says {known.visible_s} s over {known.appearances}"
            )
    for where, text in _texts(content):
        for m in TIME_RE.finditer(text):
            check_time(where, m.group(1))
        for m in _PHASE_RE.finditer(text):
            check_phase(where, m.group(1))
        for m in _PHASE_MENTION_RE.finditer(text):
            named = m.group(1).strip()
            if named.lower() in _PHASE_NAMES or named.lower().split()[0] in _PHASE_QUALIFIERS:
                continue  # a full name is checked above; "the longest phase" names none
            # Short names ("the Calot phase") must still be phases of this case.
            short = find_phases(named.lower())
            if short:
                check_phase(where, PHASES[short[0]])
            else:
                n_phases += 1
                problems.append(f"{where}: phase {named!r} is not a phase of this case")
        for m in _INSTRUMENT_RE.finditer(text):
            check_instrument(where, m.group(1))
        for m in _FOREIGN_RE.finditer(text):
            n_instruments += 1
            problems.append(f"{where}: instrument {m.group(1)!r} is not one the analysis knows")
    return Grounding(
        passed=not problems,
        timestamps_checked=n_times,
        phases_checked=n_phases,
        instruments_checked=n_instruments,
        problems=problems,
    )


def assemble_report(
    content: ReportContent, analysis: Analysis, generated_by: GeneratedBy
) -> Report:
    """The stored report: content, provenance and the grounding result."""
    return Report(
        **content.model_dump(),
        case_id=analysis.case_id,
        analysis_schema_version=analysis.schema_version,
        generated_by=generated_by,
        grounding=check_grounding(content, analysis),
    )


# -- HTML ------------------------------------------------------------------------------------

# One colour per Cholec80 phase / instrument, the same in every chart and every report.
PHASE_COLOURS = ("#8dd3c7", "#fdb462", "#fb8072", "#80b1d3", "#b3de69", "#bebada", "#fccde5")


def phase_colour(phase_id: int) -> str:
    """The timeline colour of a phase (the palette repeats for vocabularies of more phases)."""
    return PHASE_COLOURS[phase_id % len(PHASE_COLOURS)]


INSTRUMENT_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _time_axis(ax: Any, duration_s: float) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xlim(0, max(duration_s, 1.0))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: hhmmss(x)))
    ax.set_xlabel("time (HH:MM:SS)")


def phase_timeline_png(analysis: Analysis) -> str:
    """The phase timeline as a base64 PNG: one coloured bar per segment along the video."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads

    a = analysis
    fig = Figure(figsize=(9, 1.9))
    ax = fig.subplots()
    for p in a.phases:
        ax.broken_barh([(p.start_s, p.duration_s)], (0, 1), color=phase_colour(p.phase_id))
    for e in a.events:
        if e.kind == "out_of_body" and e.duration_s > 0:
            ax.broken_barh([(e.start_s, e.duration_s)], (-0.35, 0.25), color="#444444")
    ax.set_yticks([])
    ax.set_ylim(-0.45, 1.05)
    _time_axis(ax, a.video.duration_s)
    seen = sorted({(p.phase_id, p.phase) for p in a.phases})
    from matplotlib.patches import Patch

    handles = [Patch(color=phase_colour(i), label=name) for i, name in seen]
    if any(e.kind == "out_of_body" for e in a.events):
        handles.append(Patch(color="#444444", label="out of body"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=4,
              fontsize=8, frameon=False)  # fmt: skip
    ax.set_title("Phase timeline")
    return _figure_png(fig)


def instrument_usage_png(analysis: Analysis) -> str:
    """Instrument usage as a base64 PNG: visible stretches per instrument, and total time."""
    from matplotlib.figure import Figure

    a = analysis
    rows = max(len(a.instruments), 1)
    fig = Figure(figsize=(9, 0.45 * rows + 1.6))
    ax_time, ax_total = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
    for n, inst in enumerate(a.instruments):
        colour = INSTRUMENT_COLOURS[inst.class_id % len(INSTRUMENT_COLOURS)]
        ax_time.broken_barh([(s, e - s) for s, e in inst.intervals], (n - 0.35, 0.7), color=colour)
        ax_total.barh(n, inst.visible_s, color=colour)
    labels = [i.instrument.replace("_", " ") for i in a.instruments]
    ax_time.set_yticks(range(len(labels)), labels)
    ax_time.set_ylim(rows - 0.4, -0.6)  # first instrument on top, like the tables
    _time_axis(ax_time, a.video.duration_s)
    ax_time.set_title("Instrument usage")
    ax_total.set_xlabel("visible (s)")
    ax_total.set_title("Total")
    if not a.instruments:
        ax_time.text(0.5, 0.5, "no instrument detected", transform=ax_time.transAxes,
                     ha="center", va="center")  # fmt: skip
    return _figure_png(fig)


def render_html(report: Report, analysis: Analysis) -> str:
    """A self-contained HTML page: summary, the two charts (embedded PNGs), tables, provenance.

    Args:
        report: The stored report.
        analysis: The analysis it was written from (for the charts).

    Returns:
        The HTML document (no external resources: it opens offline and can be archived).
    """
    e = html.escape
    r = report

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        if not rows:
            return "<p><em>none</em></p>"
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    g = r.generated_by
    writer = g.writer + (f" ({g.model})" if g.model else "") + f", {g.version}"
    if g.fallback_reason:
        writer += f"; template used because: {g.fallback_reason}"
    grounding = "passed" if r.grounding.passed else "FAILED: " + "; ".join(r.grounding.problems)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Case report {e(r.case_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} .meta {{ color: #666; font-size: .9em; }}
</style></head><body>
<h1>Case report</h1>
<p class="meta">case {e(r.case_id)} &middot; schema {e(r.schema_version)}</p>
<h2>Summary</h2>
<p id="procedure-summary">{e(r.procedure_summary)}</p>
<h2>Phase timeline</h2>
<img id="phase-timeline-chart" alt="phase timeline" src="data:image/png;base64,{
        phase_timeline_png(analysis)
    }">
<h2>Instrument usage</h2>
<img id="instrument-usage-chart" alt="instrument usage" src="data:image/png;base64,{
        instrument_usage_png(analysis)
    }">
{
        table(
            ["instrument", "visible (s)", "appearances", "first use", "last use"],
            [
                [i.instrument, i.visible_s, i.appearances, i.first_use, i.last_use]
                for i in r.instrument_usage
            ],
        )
    }
<h2>Key events</h2>
{table(["time", "event"], [[k.timestamp, k.description] for k in r.key_events])}
<h2>Phase durations</h2>
{
        table(
            ["phase", "start", "end", "duration (s)"],
            [[p.phase, p.start, p.end, p.duration_s] for p in r.phase_durations],
        )
    }
<h2>Anomalies observed</h2>
{table(["time", "finding"], [[a.timestamp, a.description] for a in r.anomalies_observed])}
<p class="meta">Written by {e(writer)}. Grounding check: {e(grounding)}.</p>
</body></html>
"""  # noqa: E501
