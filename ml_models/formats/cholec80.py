"""The Cholec80 vocabulary: instrument classes and surgical phases, in the dataset's order.

Every model, importer, writer and metric in the project numbers instruments and phases this way,
so a class id means the same thing in a YOLO label, a MOT file, a catalog row and a report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

INSTRUMENT_CLASSES: tuple[str, ...] = (
    "grasper",
    "bipolar",
    "hook",
    "scissors",
    "clipper",
    "irrigator",
    "specimen_bag",
)

PHASES: tuple[str, ...] = (
    "Preparation",
    "Calot triangle dissection",
    "Clipping and cutting",
    "Gallbladder dissection",
    "Gallbladder packaging",
    "Cleaning and coagulation",
    "Gallbladder retraction",
)

# Names as written in the official Cholec80 phase files (tab-separated, one row per frame).
OFFICIAL_PHASE_NAMES: tuple[str, ...] = (
    "Preparation",
    "CalotTriangleDissection",
    "ClippingCutting",
    "GallbladderDissection",
    "GallbladderPackaging",
    "CleaningCoagulation",
    "GallbladderRetraction",
)

# Column headers of the official tool-presence files.
OFFICIAL_TOOL_NAMES: tuple[str, ...] = (
    "Grasper",
    "Bipolar",
    "Hook",
    "Scissors",
    "Clipper",
    "Irrigator",
    "SpecimenBag",
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


_INSTRUMENT_BY_KEY = {_key(n): i for i, n in enumerate(INSTRUMENT_CLASSES)}
_INSTRUMENT_BY_KEY.update({_key(n): i for i, n in enumerate(OFFICIAL_TOOL_NAMES)})
_PHASE_BY_KEY = {_key(n): i for i, n in enumerate(PHASES)}
_PHASE_BY_KEY.update({_key(n): i for i, n in enumerate(OFFICIAL_PHASE_NAMES)})
_PHASE_BY_KEY.update({"clippingcutting": 2, "cleaningcoagulation": 5})


def instrument_id(name: str) -> int | None:
    """The Cholec80 class id of an instrument name, in any spelling the datasets use.

    Args:
        name: e.g. ``"specimen_bag"``, ``"SpecimenBag"``, ``"Specimen bag"``.

    Returns:
        The class id 0-6, or None when the name is not a Cholec80 instrument (e.g. ``"snare"``).
    """
    return _INSTRUMENT_BY_KEY.get(_key(name))


def phase_id(name: str) -> int | None:
    """The Cholec80 phase id of a phase name (official file spelling or readable spelling).

    Args:
        name: e.g. ``"CalotTriangleDissection"`` or ``"Calot triangle dissection"``.

    Returns:
        The phase id 0-6, or None when the name is not a Cholec80 phase.
    """
    return _PHASE_BY_KEY.get(_key(name))


def vocabulary_of(names: Iterable[str]) -> list[str]:
    """The phase vocabulary of labels read in order, as a model numbers it.

    Cholec80's seven in their order when every name is one of them (in either spelling; a phase
    none of the labels shows keeps its number, so reports stay comparable); otherwise each name
    numbered where it first appears: another procedure's vocabulary comes from its labels.
    """
    seen = dict.fromkeys(names)
    if all(phase_id(n) is not None for n in seen):
        return list(PHASES)
    return list(seen)


def phase_index(name: str, vocabulary: list[str] | tuple[str, ...]) -> int | None:
    """The id of a phase name in a vocabulary (Cholec80's names in either spelling), or None."""
    if list(vocabulary) == list(PHASES):
        return phase_id(name)
    return vocabulary.index(name) if name in vocabulary else None
