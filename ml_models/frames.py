"""A small frame CNN shared by the phase model's feature stage and the out-of-body classifier.

Both see one frame per second at low resolution: colour and texture (tissue vs operating room,
gallbladder vs liver bed, the bag, clips) matter more than fine detail, and a small network trains
in minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ml_models.errors import InputError
from ml_models.video import VideoSource, sample_frames

FRAME_SIZE = 96


POOLS = ("avg", "avgmax")


class _AvgMaxPool(nn.Module):
    """(N, C, H, W) -> (N, 2C, 1, 1): the spatial mean and the spatial max of each channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate both pools along the channels."""
        return torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)], 1)


class FrameCNN(nn.Module):
    """Four conv blocks -> a ``feature_dim`` embedding -> ``n_classes`` logits.

    With ``n_tools`` > 0 a second head predicts which instruments are in view (multi-label),
    trained beside the classes as in EndoNet and TeCNO: phases that look alike (clipping and
    dissection, cleaning and retraction) differ mostly in the instruments used, and a
    tool-presence target makes the embedding notice them.
    """

    def __init__(
        self, n_classes: int, feature_dim: int = 64, n_tools: int = 0, pool: str = "avg"
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        # "avgmax" gives half the channels to each of a mean and a max over the image: a mean
        # dilutes a small, decisive detail (three clips on the duct) in a large uniform frame,
        # a max keeps it wherever it is. Neither pool has weights, so older "avg" bundles load
        # as they were.
        last = feature_dim if pool == "avg" else feature_dim // 2
        self.features = nn.Sequential(
            block(3, 16), block(16, 32), block(32, 64), block(64, last),
            nn.AdaptiveAvgPool2d(1) if pool == "avg" else _AvgMaxPool(), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, n_classes)
        self.tool_head = nn.Linear(feature_dim, n_tools) if n_tools > 0 else None
        self.feature_dim = feature_dim
        self.n_tools = n_tools
        self.pool = pool

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frame embeddings (N, feature_dim)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, n_classes)."""
        return self.head(self.embed(x))


def load_bundle(path: str | Path, kind: str, what: str, train_hint: str) -> dict[str, Any]:
    """A model bundle this project wrote (``torch.save`` of a dict marked ``kind``), read as
    tensors and plain values only: a weights file from a shared store must not run code.

    Raises:
        InputError: The file is missing, damaged, or holds something else; naming the model and
            what to do.
    """
    if not Path(path).is_file():
        raise InputError(f"the {what} file does not exist; train one with {train_hint}.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle with code, a different format
        raise InputError(
            f"the {what} file cannot be read as tensors ({type(e).__name__}); it is damaged or "
            f"not a surg model: register it again or retrain with {train_hint}."
        ) from None
    if not isinstance(blob, dict) or blob.get("kind") != kind:
        raise InputError(f"the {what} file is not a surg {what}; retrain with {train_hint}.")
    return blob


def prepare(bgr: np.ndarray) -> np.ndarray:
    """A decoded BGR frame -> the CNN's input (FRAME_SIZE square RGB, uint8)."""
    small = cv2.resize(bgr, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
    return small[..., ::-1].copy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised (N, 3, H, W) float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.45) / 0.25


def frames_per_second(video: str | Path, fps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Sample a video at ``fps``; return (times (N,), prepared images (N, S, S, 3))."""
    times, images = [], []
    for frame in sample_frames(video, fps):
        times.append(frame.t_s)
        images.append(prepare(frame.bgr))
    if not images:
        return np.zeros(0), np.zeros((0, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    return np.asarray(times), np.stack(images)


@torch.no_grad()
def embed_video(
    model: FrameCNN,
    video: VideoSource,
    fps: float = 1.0,
    batch_size: int = 256,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a video at ``fps`` and embed the frames as they are decoded.

    Only the embeddings are kept (a few hundred bytes a second of video), never the frames: a
    6-hour case at 1 fps would otherwise hold about 600 MB of prepared frames, twice over while
    they were stacked.

    Returns:
        (times (N,), embeddings (N, feature_dim)), as :func:`embed_images` of
        :func:`frames_per_second` would give.
    """
    model.eval().to(device)
    times: list[float] = []
    feats: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        feats.append(model.embed(to_tensor(np.stack(pending)).to(device)).cpu().numpy())
        pending.clear()

    for frame in sample_frames(video, fps):
        times.append(frame.t_s)
        pending.append(prepare(frame.bgr))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not feats:
        return np.zeros(0), np.zeros((0, model.feature_dim), np.float32)
    return np.asarray(times), np.concatenate(feats)


def batches(n: int, size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches over ``n`` items (shuffled when ``rng`` is given)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def train_classifier(
    model: FrameCNN,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment: bool = True,
    tools: np.ndarray | None = None,
) -> list[float]:
    """Train a FrameCNN on prepared images; return the loss per epoch.

    ``tools`` (N, ``model.n_tools``) of 0/1 trains the tool-presence head too (binary cross-
    entropy added to the class loss).
    """
    shape = (len(images), model.n_tools)
    if tools is not None and (model.tool_head is None or tools.shape != shape):
        raise ValueError("tools must be (N, n_tools) for a FrameCNN built with n_tools")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    counts = np.bincount(labels, minlength=model.head.out_features).astype(np.float32)
    # Rare classes (short phases, out-of-body minutes) would otherwise be ignored.
    weights = torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0),
        dtype=torch.float32,
    )
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    tool_loss = nn.BCEWithLogitsLoss()
    history = []
    model.train()
    for _ in range(epochs):
        total = 0.0
        for idx in batches(len(images), batch_size, rng):
            x = to_tensor(images[idx])
            if augment:
                x = _augment(x, rng)
            y = torch.from_numpy(labels[idx]).long()
            opt.zero_grad()
            emb = model.embed(x)
            loss = loss_fn(model.head(emb), y)
            if tools is not None:
                target = torch.from_numpy(tools[idx].astype(np.float32))
                loss = loss + tool_loss(model.tool_head(emb), target)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / max(1, len(images)))
    model.eval()
    return history


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Flips and brightness/contrast jitter: the camera and the light change from case to case."""
    if rng.random() < 0.5:
        x = torch.flip(x, dims=[3])
    scale = torch.from_numpy(rng.uniform(0.8, 1.2, (x.shape[0], 1, 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.2, 0.2, (x.shape[0], 1, 1, 1)).astype(np.float32))
    return x * scale + shift


@torch.no_grad()
def embed_images(
    model: FrameCNN, images: np.ndarray, batch_size: int = 256, device: str = "cpu"
) -> np.ndarray:
    """Embeddings of prepared images, (N, feature_dim), computed on ``device``."""
    model.eval().to(device)
    out = [
        model.embed(to_tensor(images[i : i + batch_size]).to(device)).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.feature_dim), np.float32)


@torch.no_grad()
def predict_proba(model: FrameCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of prepared images, (N, n_classes)."""
    model.eval()
    out = [
        torch.softmax(model(to_tensor(images[i : i + batch_size])), dim=1).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export a model to ONNX with a dynamic first axis (frames, or seconds of video).

    The inputs are what :func:`to_tensor` makes of prepared images; the graph gives what the
    module's ``forward`` gives. Uses the TorchScript exporter, which needs nothing beyond torch
    and ``onnx`` (the newer exporter needs ``onnxscript``).
    """
    path = Path(path)
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=["frames"],
        output_names=["output"],
        dynamic_axes={"frames": {0: "n"}, "output": {0: "n"}},
    )
    return path
