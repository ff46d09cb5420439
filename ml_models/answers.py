"""Answers to common questions about a case, from its analysis alone (offline, deterministic).

``answer(question, analysis)`` handles what surgeons ask most:

- which instrument (or phase, or event) at a time: "which instrument at 15:30?";
- how long a phase took: "how long was the Calot triangle dissection?";
- when an instrument was first (or last) used: "when was the clipper first used?";
- what happened between two times: "what happened between 10:00 and 12:30?".

Every answer cites the ``HH:MM:SS`` timestamps it rests on. A question outside these shapes is
the user's to rephrase (:class:`~ml_models.errors.InputError` with examples).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ml_models.analysis import (
    Analysis,
    format_duration,
    hhmmss,
    join_words,
    merge_intervals,
    state_at,
)
from ml_models.errors import InputError
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES

EXAMPLES = (
    '"which instrument at 15:30?", "how long was the Calot triangle dissection?", '
    '"when was the clipper first used?", "what happened between 10:00 and 12:30?"'
)

# Words people use for each phase; the longest match wins ("gallbladder dissection" before
# "dissection").
_PHASE_ALIASES: dict[str, int] = {
    "preparation": 0,
    "calot triangle dissection": 1,
    "calot's triangle dissection": 1,
    "calot": 1,
    "clipping and cutting": 2,
    "clipping": 2,
    "cutting": 2,
    "gallbladder dissection": 3,
    "dissection of the gallbladder": 3,
    "gallbladder packaging": 4,
    "packaging": 4,
    "cleaning and coagulation": 5,
    "cleaning": 5,
    "coagulation": 5,
    "gallbladder retraction": 6,
    "retraction": 6,
}
_INSTRUMENT_ALIASES: dict[str, int] = {}
for _i, _name in enumerate(INSTRUMENT_CLASSES):
    _INSTRUMENT_ALIASES[_name] = _i
    _INSTRUMENT_ALIASES[_name.replace("_", " ")] = _i
_INSTRUMENT_ALIASES.update(
    {"clip applier": 4, "clips": 4, "bag": 6, "retrieval bag": 6, "suction": 5, "irrigation": 5}
)

_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_TIME = rf"(?:{_CLOCK}|\d+(?:\.\d+)?\s*(?:s|sec|secs|seconds|min|mins|minutes)\b)"


@dataclass
class Answer:
    """An answer and the timestamps it cites."""

    text: str
    citations: list[str] = field(default_factory=list)
    intent: str = ""


def parse_time(text: str) -> float:
    """Seconds of a time as people write it: ``15:30``, ``1:02:03``, ``930 s``, ``15 min``."""
    text = text.strip().lower()
    if ":" in text:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 2:
            return float(parts[0] * 60 + parts[1])
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    m = re.match(r"(\d+(?:\.\d+)?)\s*(\w+)", text)
    assert m, text
    value, unit = float(m.group(1)), m.group(2)
    return value * 60 if unit.startswith("min") else value


def _find(aliases: dict[str, int], q: str) -> list[int]:
    found: list[int] = []
    taken: list[tuple[int, int]] = []
    for alias in sorted(aliases, key=len, reverse=True):
        for m in re.finditer(rf"\b{re.escape(alias)}s?\b", q):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            taken.append((m.start(), m.end()))
            if aliases[alias] not in found:
                found.append(aliases[alias])
    return found


def find_phases(text: str) -> list[int]:
    """Phase ids named in lower-case text, by full or short name ("calot", "packaging")."""
    return _find(_PHASE_ALIASES, text)


def _check_time(t: float, analysis: Analysis, label: str) -> None:
    if t < 0 or t > analysis.video.duration_s + 1e-6:
        raise InputError(
            f"the question's time {label} ({hhmmss(t)}) is outside the video, which lasts "
            f"{hhmmss(analysis.video.duration_s)}; ask about a time within it."
        )


def answer(question: str, analysis: Analysis) -> Answer:
    """Answer a question about a case from its analysis.

    Args:
        question: Free text, e.g. ``"which instrument at 15:30?"``.
        analysis: The case analysis.

    Returns:
        The answer with the timestamps it cites.

    Raises:
        InputError: When the question is not one of the supported kinds (the message gives
            examples) or names a time outside the video.
    """
    q = " ".join(question.lower().split())
    times = [parse_time(m.group(0)) for m in re.finditer(_TIME, q)]
    phases = _find(_PHASE_ALIASES, q)
    instruments = _find(_INSTRUMENT_ALIASES, q)

    if len(times) >= 2 and re.search(r"\bbetween\b|\bfrom\b", q):
        start, end = sorted(times[:2])
        _check_time(start, analysis, "start")
        _check_time(end, analysis, "end")
        return between(analysis, start, end)
    if instruments and not times and re.search(r"\b(first|when|start|last|until|how)\b", q):
        return instrument_use(analysis, instruments[0], last=bool(re.search(r"\blast\b", q)))
    if phases and re.search(r"\bhow long\b|\bduration\b|\blast(ed)?\b|\btake\b|\btook\b", q):
        return phase_duration(analysis, phases[0])
    if phases and re.search(r"\bwhen\b", q):
        return phase_duration(analysis, phases[0])
    if len(times) == 1:
        _check_time(times[0], analysis, "")
        return at_time(analysis, times[0])
    raise InputError(f"the question was not understood; ask e.g. {EXAMPLES}.")


def at_time(analysis: Analysis, t_s: float) -> Answer:
    """Which phase, instruments and events at one moment."""
    s = state_at(analysis, t_s)
    stamp = s["timestamp"]
    if s["instruments"]:
        tools = join_words([i.replace("_", " ") for i in s["instruments"]])
        text = f"At {stamp} the {tools} {'is' if len(s['instruments']) == 1 else 'are'} visible"
    else:
        text = f"At {stamp} no instrument is visible"
    text += f", during {s['phase']}" if s["phase"] else ", outside any recognised phase"
    if s["events"]:
        text += f" (video events: {', '.join(k.replace('_', ' ') for k in s['events'])})"
    return Answer(text + ".", [stamp], "at_time")


def phase_duration(analysis: Analysis, phase_id: int) -> Answer:
    """How long a phase took, and when."""
    name = PHASES[phase_id]
    segs = [p for p in analysis.phases if p.phase_id == phase_id]
    if not segs:
        return Answer(f"{name} was not recognised in this case.", [], "phase_duration")
    total = sum(p.duration_s for p in segs)
    spans = ", ".join(f"{p.start}-{p.end}" for p in segs)
    text = f"{name} lasted {format_duration(total)}"
    text += f" ({total:.0f} s), {spans}" if total >= 60 else f", {spans}"
    if len(segs) > 1:
        text += f", in {len(segs)} separate stretches"
    cites = [c for p in segs for c in (p.start, p.end)]
    return Answer(text + ".", cites, "phase_duration")


def instrument_use(analysis: Analysis, class_id: int, last: bool = False) -> Answer:
    """When an instrument was first (or last) seen, and how much it was used."""
    name = INSTRUMENT_CLASSES[class_id]
    spoken = name.replace("_", " ")
    inst = next((i for i in analysis.instruments if i.class_id == class_id), None)
    if inst is None:
        return Answer(f"The {spoken} was not detected in this case.", [], "instrument_use")
    phase = state_at(analysis, inst.last_use_s if last else inst.first_use_s)["phase"]
    when = inst.last_use if last else inst.first_use
    text = (
        f"The {spoken} was {'last' if last else 'first'} seen at {when}"
        + (f" (during {phase})" if phase else "")
        + f"; visible {format_duration(inst.visible_s)} in all over {inst.appearances} "
        f"appearance{'s' if inst.appearances != 1 else ''}, "
        f"from {inst.first_use} to {inst.last_use}."
    )
    cites = list(dict.fromkeys([when, inst.first_use, inst.last_use]))
    return Answer(text, cites, "instrument_use")


def between(analysis: Analysis, start: float, end: float) -> Answer:
    """Phases, instruments, events and anomalies between two times."""
    a0, a1 = hhmmss(start), hhmmss(end)
    parts: list[str] = []
    cites = [a0, a1]
    phases = [p for p in analysis.phases if p.start_s < end and p.end_s > start]
    if phases:
        parts.append(
            "phases: "
            + "; ".join(
                f"{p.phase} ({hhmmss(max(p.start_s, start))}-{hhmmss(min(p.end_s, end))})"
                for p in phases
            )
        )
        for p in phases:
            if p.start_s >= start:
                cites.append(p.start)
    tools = []
    for inst in analysis.instruments:
        inside = merge_intervals(
            [(max(s, start), min(e, end)) for s, e in inst.intervals if s < end and e > start]
        )
        if inside:
            seconds = sum(e - s for s, e in inside)
            tools.append(
                f"{inst.instrument.replace('_', ' ')} from {hhmmss(inside[0][0])} "
                f"({format_duration(seconds)} visible)"
            )
            cites.append(hhmmss(inside[0][0]))
    parts.append("instruments: " + ("; ".join(tools) if tools else "none"))
    events = [e for e in analysis.events if e.start_s <= end and e.end_s >= start]
    if events:
        parts.append(
            "events: " + "; ".join(f"{e.kind.replace('_', ' ')} at {e.start}" for e in events)
        )
        cites += [e.start for e in events]
    anomalies = [x for x in analysis.anomalies if start <= x.start_s <= end]
    if anomalies:
        parts.append("anomalies: " + "; ".join(f"{x.description} at {x.start}" for x in anomalies))
        cites += [x.start for x in anomalies]
    text = f"Between {a0} and {a1}: " + ". ".join(parts) + "."
    return Answer(text, list(dict.fromkeys(cites)), "between")
