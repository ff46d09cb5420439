"""De-identification of a normalised video: out-of-body frames blurred, burned-in text redacted.

Out-of-body frames show the operating room (faces, monitors, whiteboards): they are pixelated and
blurred beyond recognition. Burned-in recorder overlays carry the patient's name, id and dates:
their boxes are blacked out for as long as the overlay is shown (plus a margin in space and
time). Only the seconds with something to hide are encoded again (with the normaliser's
settings); the rest is copied from the normalised video bit for bit. No container metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ml_models.events import Event, OutOfBodyClassifier
from ml_models.video import normalised_encoder_options


@dataclass(frozen=True)
class Redaction:
    """What to hide and when."""

    blur: list[tuple[float, float]]  # out-of-body intervals (seconds)
    boxes: list[tuple[float, float, tuple[int, int, int, int]]]  # (start, end, x1 y1 x2 y2)


def plan_redaction(events: list[Event], margin_s: float = 0.5, margin_px: int = 6) -> Redaction:
    """Turn detected events into a redaction plan, padded so boundaries never leak a frame."""
    blur = [
        (max(0.0, e.start_s - margin_s), e.end_s + margin_s)
        for e in events
        if e.kind == "out_of_body"
    ]
    boxes = []
    for e in events:
        if e.kind != "burned_in_text" or not e.detail:
            continue
        x1, y1, x2, y2 = json.loads(e.detail)["box"]
        boxes.append(
            (
                max(0.0, e.start_s - margin_s),
                e.end_s + margin_s,
                (x1 - margin_px, y1 - margin_px, x2 + margin_px, y2 + margin_px),
            )
        )
    return Redaction(blur, boxes)


def obliterate(bgr: np.ndarray) -> np.ndarray:
    """Pixelate to a 12-pixel-wide mosaic, then blur: no face or text survives."""
    h, w = bgr.shape[:2]
    tiny = cv2.resize(bgr, (12, max(1, round(12 * h / w))), interpolation=cv2.INTER_AREA)
    big = cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(big, (0, 0), sigmaX=max(2.0, w / 40))


@dataclass(frozen=True)
class DeidResult:
    """Counts of what was changed.

    ``gops_copied`` one-second groups of pictures had nothing to hide and were copied from the
    normalised video bit for bit; ``gops_reencoded`` were decoded, redacted and encoded again.
    """

    frames: int
    frames_blurred: int
    frames_redacted: int
    gops_copied: int = 0
    gops_reencoded: int = 0


def deidentify(src: str | Path, dst: str | Path, plan: Redaction) -> DeidResult:
    """Write the de-identified copy of a normalised video (same size, rate and keyframes).

    The normalised video is cut into closed one-second groups of pictures (GOPs). Only the GOPs
    that hold a picture to blur or redact are decoded and encoded again, with the normaliser's
    own x264 settings; every other GOP is copied packet for packet. On a case with little to
    hide that skips most of a decode and an x264 encode, and the reviewers' video keeps the
    normalised video's pictures exactly instead of losing detail to a second lossy encode. A
    video these GOPs cannot be spliced into (not H.264 from the normaliser's settings) is
    re-encoded whole, as before.
    """
    with av.open(str(src)) as probe:
        stream = probe.streams.video[0]
        spliceable = _spliceable(stream)
        keyframes = _keyframe_times(probe, stream) if spliceable else []
    if not spliceable or not keyframes:
        return _reencode_all(src, dst, plan)
    return _reencode_dirty_gops(src, dst, plan, keyframes)


def _hides(plan: Redaction, t: float) -> tuple[bool, list[tuple[int, int, int, int]]]:
    """What the plan hides in the picture shown at ``t``: blur or not, and the boxes."""
    return any(a <= t < b for a, b in plan.blur), [box for a, b, box in plan.boxes if a <= t < b]


def _redact(frame: av.VideoFrame, blur: bool, boxes: list) -> av.VideoFrame:
    img = frame.to_ndarray(format="bgr24")
    if blur:
        img = obliterate(img)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 0), thickness=-1)
    return av.VideoFrame.from_ndarray(img, format="bgr24")


def _reencode_all(src: str | Path, dst: str | Path, plan: Redaction) -> DeidResult:
    """Decode, redact and encode every picture (any input PyAV reads)."""
    frames = blurred = redacted = 0
    with (
        av.open(str(src)) as inp,
        av.open(str(dst), "w", format="mp4", container_options={"movflags": "+faststart"}) as out,
    ):
        ins = inp.streams.video[0]
        ins.thread_type = "AUTO"
        rate = ins.average_rate or Fraction(25)
        ost = out.add_stream("libx264", rate=rate)
        ost.width, ost.height, ost.pix_fmt = (
            ins.codec_context.width,
            ins.codec_context.height,
            "yuv420p",
        )
        ost.options = normalised_encoder_options(rate)
        ost.codec_context.time_base = Fraction(1) / rate
        for frame in inp.decode(ins):
            blur, boxes = _hides(plan, float(frame.time or 0.0))
            new = frame
            # Most frames need nothing hidden: they go to the encoder as decoded, without the
            # round trip through BGR.
            if blur or boxes:
                new = _redact(frame, blur, boxes)
                blurred += int(blur)
                redacted += int(bool(boxes))
            new = new.reformat(format="yuv420p")
            new.pts = frames
            new.time_base = ost.codec_context.time_base
            for packet in ost.encode(new):
                out.mux(packet)
            frames += 1
        for packet in ost.encode():
            out.mux(packet)
    return DeidResult(frames, blurred, redacted, 0, 0)


def _new_encoder(ins: av.VideoStream) -> av.CodecContext:
    rate = ins.average_rate or Fraction(25)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = (
        ins.codec_context.width,
        ins.codec_context.height,
        "yuv420p",
    )
    enc.time_base = Fraction(1) / rate
    enc.framerate = rate
    enc.options = normalised_encoder_options(rate)
    # Parameter sets in extradata (as the MP4 muxer asks for), not repeated in the packets.
    enc.flags |= av.codec.context.Flags.global_header
    enc.open()
    return enc


def _nal_units(annexb: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (start-code delimited, as x264 writes them)."""
    units = []
    for piece in annexb.split(b"\x00\x00\x01"):
        unit = piece.rstrip(b"\x00")  # a four-byte start code leaves a zero on the previous unit
        if unit:
            units.append(unit)
    return units


def _avcc_parameter_sets(avcc: bytes) -> list[bytes]:
    """SPS and PPS units of an MP4 ``avcC`` record."""
    units, pos = [], 5
    for count_mask in (0x1F, 0xFF):
        if pos >= len(avcc):
            break
        count = avcc[pos] & count_mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(avcc[pos : pos + 2], "big")
            units.append(avcc[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return units


def _spliceable(stream: av.VideoStream) -> bool:
    """True if pictures encoded with the normaliser's settings can be spliced into ``stream``:
    H.264 in MP4 form whose parameter sets are exactly what a fresh encoder writes."""
    extradata = bytes(stream.codec_context.extradata or b"")
    if stream.codec_context.name != "h264" or not extradata or extradata[0] != 1:
        return False
    try:
        enc = _new_encoder(stream)
    except (av.error.FFmpegError, ValueError):
        return False
    return _nal_units(bytes(enc.extradata or b"")) == _avcc_parameter_sets(extradata)


def _keyframe_times(container: av.container.InputContainer, stream: av.VideoStream) -> list[float]:
    """Presentation times of the keyframes (packets only, nothing decoded)."""
    times = [
        float(p.pts * p.time_base)
        for p in container.demux(stream)
        if p.is_keyframe and p.pts is not None
    ]
    return sorted(times)


def _reencode_dirty_gops(
    src: str | Path, dst: str | Path, plan: Redaction, keyframes: list[float]
) -> DeidResult:
    import bisect

    spans = [*plan.blur, *((a, b) for a, b, _ in plan.boxes)]
    ends = [*keyframes[1:], float("inf")]
    dirty = [
        any(a < end and b > start for a, b in spans)
        for start, end in zip(keyframes, ends, strict=True)
    ]
    frames = blurred = redacted = copied = reencoded = 0
    with (
        av.open(str(src)) as inp,
        av.open(str(dst), "w", format="mp4", container_options={"movflags": "+faststart"}) as out,
    ):
        ins = inp.streams.video[0]
        ins.thread_type = "AUTO"
        ost = out.add_stream_from_template(ins)
        decoder = ins.codec_context
        encoder: av.CodecContext | None = None

        def mux_encoded(packets: list[av.Packet]) -> None:
            for packet in packets:
                # x264 writes Annex B; the MP4 stream (copied from the source) is length-prefixed.
                data = b"".join(len(u).to_bytes(4, "big") + u for u in _nal_units(bytes(packet)))
                converted = av.Packet(data)
                converted.pts, converted.dts = packet.pts, packet.dts
                converted.time_base = packet.time_base
                converted.is_keyframe = packet.is_keyframe
                converted.stream = ost
                out.mux(converted)

        def encode(frame: av.VideoFrame) -> None:
            nonlocal frames, blurred, redacted
            t = float(frame.pts * ins.time_base)
            blur, boxes = _hides(plan, t)
            new = _redact(frame, blur, boxes) if blur or boxes else frame
            blurred += int(blur)
            redacted += int(bool(boxes))
            new = new.reformat(format="yuv420p")
            new.pts = int(round(t / float(encoder.time_base)))
            new.time_base = encoder.time_base
            mux_encoded(encoder.encode(new))
            frames += 1

        def finish_dirty_run() -> None:
            # The run's pictures must be out before the next copied GOP: drain the decoder and
            # the encoder, then reset the decoder for the next run (which starts on a keyframe).
            nonlocal encoder
            if encoder is None:
                return
            for frame in decoder.decode(None):
                encode(frame)
            mux_encoded(encoder.encode(None))
            encoder = None
            decoder.flush_buffers()

        for packet in inp.demux(ins):
            if packet.pts is None or packet.size == 0:
                continue
            gop = bisect.bisect_right(keyframes, float(packet.pts * packet.time_base) + 1e-9) - 1
            if packet.is_keyframe:
                copied += int(not dirty[max(gop, 0)])
                reencoded += int(dirty[max(gop, 0)])
            if gop >= 0 and dirty[gop]:
                if encoder is None:
                    encoder = _new_encoder(ins)
                for frame in decoder.decode(packet):
                    encode(frame)
            else:
                finish_dirty_run()
                packet.stream = ost
                out.mux(packet)
                frames += 1
        finish_dirty_run()
    return DeidResult(frames, blurred, redacted, copied, reencoded)


def sharpness(bgr: np.ndarray) -> float:
    """Variance of the Laplacian: high for detail (faces, text), near zero for a blurred frame."""
    return float(cv2.Laplacian(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def residual_identifiers(
    video: str | Path,
    out_of_body: OutOfBodyClassifier | None,
    sample_fps: float = 2.0,
    max_sharpness: float = 60.0,
) -> list[str]:
    """Re-run the detectors on a de-identified video; describe anything that survived.

    A frame the out-of-body classifier still flags must be blurred (low Laplacian variance);
    the burned-in text detector must find no text anywhere.

    Returns:
        One sentence per problem (empty when the video is clean).
    """
    from ml_models.events import OutOfBodyScores, TextPersistence, black_score, colour_bars_score
    from ml_models.video import sample_frames

    problems: list[str] = []
    text = TextPersistence(window=max(3, int(4 * sample_fps)))
    times, sharp = [], []
    oob_scores = OutOfBodyScores(out_of_body)
    for frame in sample_frames(video, sample_fps):
        boxes = text.update(frame.bgr)
        if boxes:
            problems.append(f"burned-in text survives at {frame.t_s:.1f} s (box {boxes[0]})")
        times.append(frame.t_s)
        sharp.append(sharpness(frame.bgr))
        oob_scores.add(frame.bgr, black_score(frame.bgr), colour_bars_score(frame.bgr))
    scores = oob_scores.finish()
    if out_of_body is not None and len(scores):
        for t, score, s in zip(times, scores, sharp, strict=True):
            if score >= out_of_body.threshold and s > max_sharpness:
                problems.append(f"an out-of-body frame at {t:.1f} s is not blurred")
    return problems


@dataclass(frozen=True)
class DeidQuality:
    """How a de-identified video compares with the frame-level ground truth of the lab."""

    frames: int
    text_frames: int
    text_frames_redacted: int
    out_of_body_frames: int
    out_of_body_frames_blurred: int
    in_body_frames: int
    in_body_frames_blurred: int

    def as_dict(self) -> dict[str, int | float]:
        """Counts plus the three rates the privacy issue asks for."""
        return {
            **asdict(self),
            "text_frames_redacted_fraction": _fraction(self.text_frames_redacted, self.text_frames),
            "out_of_body_frames_blurred_fraction": _fraction(
                self.out_of_body_frames_blurred, self.out_of_body_frames
            ),
            "in_body_frames_blurred_fraction": _fraction(
                self.in_body_frames_blurred, self.in_body_frames
            ),
        }


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 1.0


def deid_quality(
    source: str | Path, deidentified: str | Path, truth: Iterable[dict], max_text_level: int = 40
) -> DeidQuality:
    """Measure a de-identified video against per-frame ground truth (the lab's format).

    A frame counts as blurred when it is closer to :func:`obliterate` of the source frame than
    to the source frame itself; a text box counts as redacted when no pixel of it (99th
    percentile) is brighter than ``max_text_level``, i.e. no letter stroke survived.

    Args:
        source: The video that was de-identified (the normalised video), frame for frame.
        deidentified: The de-identified copy.
        truth: One dict per frame, in order, with ``segment`` (``surgery``, ``out_of_body``,
            ``black``, ``colour_bars``) and ``text_boxes`` (``[{"box": [x1, y1, x2, y2]}]``).
        max_text_level: Brightest grey level a redacted box may keep.

    Returns:
        The counts.
    """
    counts = dict.fromkeys(DeidQuality.__dataclass_fields__, 0)
    with av.open(str(source)) as src, av.open(str(deidentified)) as out:
        pairs = zip(src.decode(src.streams.video[0]), out.decode(out.streams.video[0]), strict=True)
        for (before, after), frame_truth in zip(pairs, truth, strict=True):
            b = before.to_ndarray(format="bgr24")
            a = after.to_ndarray(format="bgr24")
            counts["frames"] += 1
            boxes = [t["box"] for t in frame_truth.get("text_boxes", [])]
            if boxes:
                counts["text_frames"] += 1
                gray = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
                h, w = gray.shape
                levels = [
                    np.percentile(gray[max(0, y1) : min(h, y2), max(0, x1) : min(w, x2)], 99)
                    for x1, y1, x2, y2 in boxes
                    if min(w, x2) > max(0, x1) and min(h, y2) > max(0, y1)
                ]
                counts["text_frames_redacted"] += int(max(levels, default=0) <= max_text_level)
            segment = frame_truth.get("segment")
            if segment not in ("out_of_body", "surgery"):
                continue
            a16 = a.astype(np.int16)
            blurred = np.abs(a16 - obliterate(b)).mean() < np.abs(a16 - b).mean()
            kind = "out_of_body" if segment == "out_of_body" else "in_body"
            counts[f"{kind}_frames"] += 1
            counts[f"{kind}_frames_blurred"] += int(blurred)
    return DeidQuality(**counts)
