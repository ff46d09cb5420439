"""Procedural laparoscopic video with ground truth for every frame.

``generate(out_dir, minutes, seed)`` writes ``video.mp4`` and its labels (YOLO detect/seg, MOT,
Cholec80 phase and tool files, ``events.json``); :class:`SyntheticCase` renders single frames.
"""

from ml_models.synthetic.generate import generate
from ml_models.synthetic.render import FrameTruth, InstrumentTruth, SyntheticCase

__all__ = ["FrameTruth", "InstrumentTruth", "SyntheticCase", "generate"]
