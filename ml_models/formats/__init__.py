"""Dataset formats: one annotation model and importers for the formats surgical datasets use.

Every importer returns an :class:`AnnotationSet` of :class:`Annotation` in pixels and seconds,
and raises :class:`ml_models.errors.AnnotationFormatError` naming the file and line (or JSON
location) of the first malformed entry.
"""

from ml_models.formats.anvil import load_anvil
from ml_models.formats.cholec import load_cholec80_phases, load_cholec80_tools, load_cholect50
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES, instrument_id, phase_id
from ml_models.formats.coco import load_coco, load_labelme
from ml_models.formats.events import load_events
from ml_models.formats.loader import FORMATS, load_annotations, sniff_format
from ml_models.formats.model import KINDS, Annotation, AnnotationSet, runs_to_intervals
from ml_models.formats.mot import load_mot
from ml_models.formats.yolo import load_yolo, parse_yolo_label

__all__ = [
    "FORMATS",
    "INSTRUMENT_CLASSES",
    "KINDS",
    "PHASES",
    "Annotation",
    "AnnotationSet",
    "instrument_id",
    "load_annotations",
    "load_anvil",
    "load_cholec80_phases",
    "load_cholec80_tools",
    "load_cholect50",
    "load_coco",
    "load_events",
    "load_labelme",
    "load_mot",
    "load_yolo",
    "parse_yolo_label",
    "phase_id",
    "runs_to_intervals",
    "sniff_format",
]
