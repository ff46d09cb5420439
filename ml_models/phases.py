"""Two-stage surgical phase recognition: per-second frame features, then temporal models.

Stage 1 is a :class:`~ml_models.frames.FrameCNN` trained to classify single frames into phases;
its embeddings (optionally with instrument presence from the detector) feed stage 2, multi-stage
temporal convolutional networks whose later stages refine the earlier stages' predictions. A
causal one in the spirit of TeCNO sees only the past, as a live view must. When the whole video
is at hand, as in the pipeline, an offline one (MS-TCN as Farha and Gall published it) sees the
past and the future: a phase such as clipping shows itself in what follows it (clips on the
duct) more than in its own first seconds. The phase vocabulary comes from the training data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_models.errors import InputError
from ml_models.frames import (
    FrameCNN,
    embed_images,
    embed_video,
    load_bundle,
    train_classifier,
)
from ml_models.video import VideoSource


class Residual(nn.Module):
    """Dilated conv (kernel 3) + 1x1 conv with a residual connection.

    Causal, it looks back ``2 * dilation`` steps and never ahead; otherwise ``dilation`` steps
    each way.
    """

    def __init__(self, channels: int, dilation: int, causal: bool = True) -> None:
        super().__init__()
        self.pad = (2 * dilation, 0) if causal else (dilation, dilation)
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        h = F.relu(self.conv(F.pad(x, self.pad)))
        return x + self.drop(self.out(h))


class Stage(nn.Module):
    """One TCN stage: input projection, ``layers`` dilated blocks, class logits."""

    def __init__(
        self, in_dim: int, channels: int, n_classes: int, layers: int, causal: bool = True
    ) -> None:
        super().__init__()
        self.inp = nn.Conv1d(in_dim, channels, 1)
        self.blocks = nn.Sequential(*[Residual(channels, 2**i, causal) for i in range(layers)])
        self.cls = nn.Conv1d(channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, T) -> logits (B, n_classes, T)."""
        return self.cls(self.blocks(self.inp(x)))


class MSTCN(nn.Module):
    """Multi-stage TCN: stage k refines the softmax of stage k-1.

    ``causal`` (the default) sees only the past; otherwise each step sees as far ahead as back.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        stages: int = 2,
        channels: int = 32,
        layers: int = 8,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.stages = nn.ModuleList(
            [Stage(in_dim, channels, n_classes, layers, causal)]
            + [Stage(n_classes, channels, n_classes, layers, causal) for _ in range(stages - 1)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_dim, T) -> logits of every stage, each (B, n_classes, T)."""
        outs = [self.stages[0](x)]
        for stage in self.stages[1:]:
            outs.append(stage(F.softmax(outs[-1], dim=1)))
        return outs


@dataclass
class PhaseVideo:
    """A training video with one phase label per sampled second."""

    video: Path
    labels: np.ndarray  # (seconds,) phase ids


@dataclass
class PhaseModel:
    """The trained two-stage model and its vocabulary."""

    encoder: FrameCNN
    temporal: MSTCN  # causal: what a live view can know
    phases: list[str]
    sample_fps: float = 1.0
    prior: PhasePrior | None = None
    offline: MSTCN | None = None  # non-causal, for whole videos; older bundles have none

    def save(self, path: str | Path) -> None:
        """Write a single ``.pt`` bundle (state dicts + vocabulary)."""
        torch.save(
            {
                "kind": "surg-phase-model",
                "phases": list(self.phases),
                "sample_fps": float(self.sample_fps),
                "feature_dim": self.encoder.feature_dim,
                "n_tools": self.encoder.n_tools,
                "pool": self.encoder.pool,
                "encoder": self.encoder.state_dict(),
                "temporal": self.temporal.state_dict(),
                "stages": len(self.temporal.stages),
                "layers": len(self.temporal.stages[0].blocks),
                "prior": self.prior.to_dict() if self.prior else None,
                "offline": self.offline.state_dict() if self.offline else None,
                "offline_stages": len(self.offline.stages) if self.offline else None,
                "offline_layers": len(self.offline.stages[0].blocks) if self.offline else None,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> PhaseModel:
        """Read a bundle written by :meth:`save`."""
        blob = load_bundle(path, "surg-phase-model", "phase model", "`surg train phase`")
        n = len(blob["phases"])
        encoder = FrameCNN(n, blob["feature_dim"], blob.get("n_tools", 0), blob.get("pool", "avg"))
        encoder.load_state_dict(blob["encoder"])
        temporal = MSTCN(
            blob["feature_dim"], n, stages=blob["stages"], layers=blob.get("layers", 8)
        )
        temporal.load_state_dict(blob["temporal"])
        offline = None
        if blob.get("offline"):
            offline = MSTCN(
                blob["feature_dim"],
                n,
                stages=blob["offline_stages"],
                layers=blob["offline_layers"],
                causal=False,
            )
            offline.load_state_dict(blob["offline"])
            offline.eval()
        encoder.eval()
        temporal.eval()
        prior = PhasePrior.from_dict(blob["prior"]) if blob.get("prior") else None
        return cls(encoder, temporal, list(blob["phases"]), blob["sample_fps"], prior, offline)

    def temporal_model(self, causal: bool = False) -> MSTCN:
        """The offline model, or the causal one when ``causal`` or when there is no other."""
        return self.temporal if causal or self.offline is None else self.offline

    @torch.no_grad()
    def predict_images(
        self, images: np.ndarray, causal: bool = False, device: str = "cpu"
    ) -> np.ndarray:
        """Per-second phase probabilities (T, n_phases) from prepared 1 fps frames.

        By default every second sees the whole video (the offline model, where the bundle has
        one); ``causal`` gives what a live view would have said at each second. Both stages
        run on ``device`` (``cpu`` or ``cuda:N``).
        """
        return self.predict_features(
            embed_images(self.encoder, images, device=device), causal, device
        )

    @torch.no_grad()
    def predict_features(
        self, feats: np.ndarray, causal: bool = False, device: str = "cpu"
    ) -> np.ndarray:
        """Per-second phase probabilities (T, n_phases) from the frame encoder's embeddings
        (:meth:`embed_video`); ``causal`` and ``device`` as in :meth:`predict_images`."""
        if len(feats) == 0:
            return np.zeros((0, len(self.phases)), np.float32)
        x = torch.from_numpy(feats.T[None]).float().to(device)
        temporal = self.temporal_model(causal)
        temporal.eval().to(device)
        logits = temporal(x)[-1][0]
        return torch.softmax(logits, dim=0).T.cpu().numpy()

    def export_onnx(self, path: str | Path, causal: bool = False) -> Path:
        """Both stages as one ONNX graph: (T, 3, S, S) normalised 1 fps frames -> (T, phases).

        The input is what :func:`ml_models.frames.to_tensor` makes of prepared frames, the
        output the per-second probabilities of :meth:`predict_images` with the same ``causal``.
        """
        from ml_models.frames import FRAME_SIZE, export_onnx

        return export_onnx(
            _PhaseGraph(self.encoder, self.temporal_model(causal)),
            torch.zeros(8, 3, FRAME_SIZE, FRAME_SIZE),
            path,
        )

    def read_case(
        self,
        feats: np.ndarray,
        min_segment_s: float = 10.0,
        whole_case_decoding: bool = True,
        whole_case_min_s: float = 120.0,
        device: str = "cpu",
    ) -> tuple[np.ndarray, list[PhaseSegment], bool]:
        """A video's per-second probabilities, its smoothed segments, and whether it was read
        as a whole case: how ``phase_timeline`` reads a case, and how training scores one.

        A video of at least ``whole_case_min_s`` is a whole case (with ``whole_case_decoding``):
        the offline model reads it and its phase path is decoded under the training prior.
        A shorter one is an excerpt, read causally: where a phase falls in a case says nothing
        about a clip cut from its middle. No segment is shorter than ``min_segment_s``.
        """
        step = 1.0 / self.sample_fps
        whole = whole_case_decoding and len(feats) * step >= whole_case_min_s
        probs = self.predict_features(feats, causal=not whole, device=device)
        prior = self.prior if whole else None
        return probs, segments_from_probabilities(probs, step, min_segment_s, prior), whole

    def embed_video(self, video: VideoSource, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """(times (T,), embeddings (T, feature_dim)) of a video sampled at the model's rate,
        embedded as it is decoded (the frames are never all held)."""
        return embed_video(self.encoder, video, self.sample_fps, device=device)

    def predict_video(
        self, video: str | Path, causal: bool = False, device: str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(times (T,), probabilities (T, n_phases)) for a video; ``causal`` and ``device`` as
        in :meth:`predict_images`."""
        times, feats = self.embed_video(video, device)
        return times, self.predict_features(feats, causal, device)


class _PhaseGraph(nn.Module):
    """Encoder and temporal model in one module, for export."""

    def __init__(self, encoder: FrameCNN, temporal: MSTCN) -> None:
        super().__init__()
        self.encoder, self.temporal = encoder, temporal

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) -> (T, n_phases) probabilities."""
        feats = self.encoder.embed(frames).T.unsqueeze(0)
        return torch.softmax(self.temporal(feats)[-1][0], dim=0).T


def train_phase_model(
    videos: list[tuple[np.ndarray, np.ndarray]],
    phases: list[str],
    encoder_epochs: int = 10,
    temporal_epochs: int = 60,
    seed: int = 0,
    log: Any = None,
    encoder_frames: int | None = None,
    layers: int = 8,
    tools: list[np.ndarray] | None = None,
    encoder_set: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    pool: str = "avgmax",
    offline: bool = True,
    step: Callable[[str], None] | None = None,
) -> PhaseModel:
    """Train both stages.

    Args:
        videos: One ``(images, labels)`` pair per training video: prepared 1 fps frames and the
            phase id of each second.
        phases: The vocabulary (index = phase id).
        encoder_epochs: Epochs of the frame classifier.
        temporal_epochs: Epochs of the TCN over whole videos.
        seed: Seed.
        log: Optional callable receiving progress strings.
        encoder_frames: Train the frame encoder on at most this many frames, drawn evenly from
            every video (neighbouring seconds look alike, so a subset teaches almost as much).
            The temporal model always sees every second.
        layers: Dilated layers per TCN stage; the receptive field is about ``2**(layers+1)``
            seconds, which must span a long phase (Cholec80 medians reach 16 minutes).
        tools: Optional instrument presence per video, ``(seconds, n_tools)`` of 0/1 aligned
            with its labels; the frame encoder then learns tool presence beside the phase
            (multi-task), which the temporal model sees through the shared embedding.
        encoder_set: ``(frames, phase ids, tool presence or None)`` the frame encoder trains
            on instead of the videos' own frames: short cases of many other scenes, so that it
            learns what marks a phase rather than what marks a scene, and the temporal model
            then learns from features of cases the encoder never saw, with the errors it will
            make on new ones.
        pool: The frame encoder's global pooling (:class:`~ml_models.frames.FrameCNN`):
            "avgmax" lets it see the clips that tell Calot-triangle dissection from
            gallbladder dissection (validation: BENCHMARKS.md, "Phase encoder: max pooling").
        offline: Also train a non-causal temporal model on the same features, for whole
            videos (:attr:`PhaseModel.offline`; validation: BENCHMARKS.md, "Offline temporal
            model").
        step: Optional callable told of each unit of progress: the frame encoder, then every
            temporal epoch (``1 + 2 * temporal_epochs`` calls with ``offline``).
    """
    torch.manual_seed(seed)
    n = len(phases)
    if tools is not None and [len(t) for t in tools] != [len(v[1]) for v in videos]:
        raise InputError("tool presence must have one row per labelled second of each video.")
    if encoder_set is not None:
        all_images, all_labels, all_tools = encoder_set
        all_labels = np.asarray(all_labels, np.int64)
    else:
        all_images = np.concatenate([v[0] for v in videos])
        all_labels = np.concatenate([v[1] for v in videos]).astype(np.int64)
        all_tools = np.concatenate(tools) if tools is not None else None
    if encoder_frames is not None and len(all_labels) > encoder_frames:
        keep = np.linspace(0, len(all_labels) - 1, encoder_frames).round().astype(int)
        all_images, all_labels = all_images[keep], all_labels[keep]
        all_tools = all_tools[keep] if all_tools is not None else None
    encoder = FrameCNN(n, n_tools=all_tools.shape[1] if all_tools is not None else 0, pool=pool)
    started = time.perf_counter()
    train_classifier(
        encoder, all_images, all_labels, epochs=encoder_epochs, seed=seed, tools=all_tools
    )
    if log:
        log(f"frame encoder trained in {time.perf_counter() - started:.0f} s")
    if step:
        step("phase frame encoder trained")
    feats = [embed_images(encoder, imgs) for imgs, _ in videos]
    labels = [v[1] for v in videos]
    temporal = train_temporal_model(
        feats, labels, n, layers, temporal_epochs, seed, True, log, step
    )
    # Its own seed, so the causal model is the same whether or not this one is trained.
    whole = (
        train_temporal_model(feats, labels, n, layers, temporal_epochs, seed + 1, False, log, step)
        if offline
        else None
    )
    encoder.eval()
    prior = PhasePrior.from_labels(labels, n)
    return PhaseModel(encoder, temporal, list(phases), prior=prior, offline=whole)


def train_temporal_model(
    feats: list[np.ndarray],
    labels: list[np.ndarray],
    n_classes: int,
    layers: int,
    epochs: int,
    seed: int,
    causal: bool,
    log: Any = None,
    step: Callable[[str], None] | None = None,
) -> MSTCN:
    """Train one MS-TCN on whole videos' frame features (one video per optimiser step);
    ``step`` is told of each epoch."""
    torch.manual_seed(seed)
    temporal = MSTCN(feats[0].shape[1], n_classes, layers=layers, causal=causal)
    opt = torch.optim.AdamW(temporal.parameters(), lr=3e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    name = "causal" if causal else "offline"
    temporal.train()
    for epoch in range(epochs):
        for i in rng.permutation(len(feats)):
            x = torch.from_numpy(feats[i].T[None]).float()
            # Feature noise stands in for the frame encoder's errors on unseen videos.
            x = x + 0.1 * torch.randn_like(x)
            y = torch.from_numpy(labels[i].astype(np.int64))[None]
            outs = temporal(x)
            loss = sum(F.cross_entropy(o, y) + 0.15 * _smoothing_loss(o) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if log and (epoch + 1) % 20 == 0:
            log(f"{name} temporal model epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
        if step:
            step(f"{name} temporal model epoch {epoch + 1}/{epochs}")
    temporal.eval()
    return temporal


def _smoothing_loss(logits: torch.Tensor) -> torch.Tensor:
    """MS-TCN's truncated MSE between neighbouring log-probabilities: penalises flicker."""
    logp = F.log_softmax(logits, dim=1)
    diff = (logp[:, :, 1:] - logp[:, :, :-1].detach()) ** 2
    return torch.clamp(diff, max=16).mean()


@dataclass(frozen=True)
class PhaseSegment:
    """A stretch of one phase."""

    phase_id: int
    start_s: float
    end_s: float
    confidence: float


def segments_from_probabilities(
    probs: np.ndarray,
    step_s: float = 1.0,
    min_segment_s: float = 10.0,
    prior: PhasePrior | None = None,
) -> list[PhaseSegment]:
    """Turn per-step probabilities into phase segments, none shorter than ``min_segment_s``.

    With a ``prior`` the labels are the case's most likely phase path under the training data's
    phase order and timing (:func:`decode_case`); without one, the per-step argmax. A short
    segment is then absorbed by whichever neighbour's phase the model found more likely over
    that stretch; the least certain short segment goes first. Confidences are the temporal
    model's own mean probability of the segment's phase.
    """
    if len(probs) == 0:
        return []
    labels = decode_case(probs, prior) if prior is not None else probs.argmax(axis=1)
    segs = _runs(labels)
    min_steps = max(1, int(round(min_segment_s / step_s)))
    while len(segs) > 1:
        short = [i for i, (_, s, e) in enumerate(segs) if e - s < min_steps]
        if not short:
            break
        # Absorb the least certain short segment first: a flicker the model barely believed
        # goes before a brief phase it was sure of.
        i = min(short, key=lambda k: probs[segs[k][1] : segs[k][2], segs[k][0]].mean())
        _, s, e = segs[i]
        options = []
        if i > 0:
            options.append((probs[s:e, segs[i - 1][0]].mean(), i - 1))
        if i < len(segs) - 1:
            options.append((probs[s:e, segs[i + 1][0]].mean(), i + 1))
        _, j = max(options)
        segs[i] = (segs[j][0], s, e)
        segs = _merge_equal(segs)
    return [
        PhaseSegment(int(p), s * step_s, e * step_s, float(probs[s:e, p].mean()))
        for p, s, e in segs
    ]


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    out = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((int(labels[start]), start, i))
            start = i
    return out


def _merge_equal(segs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for p, s, e in segs:
        if out and out[-1][0] == p:
            out[-1] = (p, out[-1][1], e)
        else:
            out.append((p, s, e))
    return out


@dataclass
class PhasePrior:
    """What a model's training labels say about phase order and timing.

    Counts, so the vocabulary stays the training data's own: per-step transitions between
    phases (the procedure's order, including any returns to an earlier phase), the first phase
    of each video, overall phase frequency, and phase frequency by progress through the video
    (elapsed fraction, ``progress.shape[0]`` bins). Nothing here is cholecystectomy-specific.
    """

    transitions: np.ndarray  # (K, K)
    initial: np.ndarray  # (K,)
    frequency: np.ndarray  # (K,)
    progress: np.ndarray  # (bins, K)

    @classmethod
    def from_labels(cls, sequences: list[np.ndarray], n_phases: int, bins: int = 20) -> PhasePrior:
        """Count the statistics of per-step label sequences (one per training video)."""
        trans = np.zeros((n_phases, n_phases))
        init, freq = np.zeros(n_phases), np.zeros(n_phases)
        progress = np.zeros((bins, n_phases))
        for seq in sequences:
            seq = np.asarray(seq, np.int64)
            if len(seq) == 0:
                continue
            init[seq[0]] += 1
            np.add.at(trans, (seq[:-1], seq[1:]), 1)
            freq += np.bincount(seq, minlength=n_phases)
            np.add.at(progress, (_progress_bins(len(seq), bins), seq), 1)
        return cls(trans, init, freq, progress)

    def to_dict(self) -> dict[str, list]:
        """Plain lists, for the model bundle."""
        return {
            k: getattr(self, k).tolist()
            for k in ("transitions", "initial", "frequency", "progress")
        }

    @classmethod
    def from_dict(cls, blob: dict[str, list]) -> PhasePrior:
        """Inverse of :meth:`to_dict`."""
        return cls(
            *(
                np.asarray(blob[k], np.float64)
                for k in ("transitions", "initial", "frequency", "progress")
            )
        )


def _progress_bins(n: int, bins: int) -> np.ndarray:
    return np.minimum((np.arange(n) * bins) // max(1, n), bins - 1)


# Chosen by a grid search on validation cases (synthetic seeds 2101-2105, 4-35 min), never on
# the held-out seeds 2001-2005 that bench/phase_quality.py scores (BENCHMARKS.md, 2026-12-02;
# searched again for the offline temporal model on 2026-12-03, where any pair scores the same).
PROGRESS_WEIGHT = 1.5
TRANSITION_WEIGHT = 3.0
TRANSITION_FLOOR = 1e-3


def decode_case(probs: np.ndarray, prior: PhasePrior) -> np.ndarray:
    """The most likely phase path of a whole case (Viterbi), one label per step.

    A causal model cannot know at minute 10 that the case lasts 40, and even the offline model
    sees only a window of the case. Once the whole video is in, two things the training data
    knows help both: where in a case each phase tends to fall (its progress profile, weighted by
    ``PROGRESS_WEIGHT``) and which phase follows which (transition counts, weighted by
    ``TRANSITION_WEIGHT``; a transition never seen keeps a small floor so an unusual case can
    still be followed). The model's probabilities are divided by the phase frequencies first (a
    hybrid HMM's scaled likelihoods), so long phases do not win twice.
    """
    n, k = probs.shape
    progress = prior.progress[_progress_bins(n, prior.progress.shape[0])] + 1.0
    progress /= progress.sum(axis=1, keepdims=True)
    freq = (prior.frequency + 1.0) / (prior.frequency + 1.0).sum()
    emit = np.log(np.clip(probs, 1e-8, 1.0)) + PROGRESS_WEIGHT * np.log(progress) - np.log(freq)
    trans = prior.transitions + TRANSITION_FLOOR
    log_trans = TRANSITION_WEIGHT * np.log(trans / trans.sum(axis=1, keepdims=True))
    init = prior.initial + TRANSITION_FLOOR
    score = np.log(init / init.sum()) + emit[0]
    back = np.zeros((n, k), np.int64)
    for t in range(1, n):
        cand = score[:, None] + log_trans
        back[t] = cand.argmax(axis=0)
        score = cand.max(axis=0) + emit[t]
    path = np.zeros(n, np.int64)
    path[-1] = int(score.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path
