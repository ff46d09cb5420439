"""Video I/O with PyAV: probing and validating uploads, normalising them, writing test videos.

Nothing here knows where a file came from: callers pass local paths and get facts or errors back.
Error messages name the input by its role ("the video"), never by its file name, because surgical
video file names routinely carry patient names and dates.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from ml_models.errors import VideoValidationError

# A video to read: a local file, or a seekable binary file object (an object in the lake read by
# range, :meth:`resources.blob_store.BlobStore.open_ranged`).
VideoSource = str | Path | BinaryIO


def open_video(video: VideoSource) -> av.container.InputContainer:
    """Open a video for reading from a path or from a seekable file object.

    A file object is read from its start, so one object can be opened once after another (a
    quick look at the stream, then a decoding pass); it stays open when the container closes.
    """
    if isinstance(video, str | Path):
        return av.open(str(video), mode="r")
    video.seek(0)
    return av.open(video, mode="r")


# Codecs a hospital recorder or a phone actually produces and FFmpeg decodes reliably. Anything
# else (raw, lossless archival, image codecs) is refused so the user converts it deliberately.
SUPPORTED_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "prores"}
)

# Container format (as FFmpeg names it) -> the extension we store the raw upload under.
CONTAINER_EXTENSIONS = {
    "mov": "mp4",
    "mp4": "mp4",
    "m4a": "mp4",
    "3gp": "mp4",
    "3g2": "mp4",
    "mj2": "mp4",
    "matroska": "mkv",
    "webm": "webm",
    "avi": "avi",
    "mpegts": "ts",
    "mpeg": "mpg",
}


@dataclass(frozen=True)
class VideoLimits:
    """What an accepted surgical video may look like, and how it is normalised.

    Attributes:
        max_duration_s: Longest accepted video.
        min_duration_s: Shortest accepted video (shorter ones are almost always mistakes).
        max_width: Widest accepted frame in pixels.
        max_height: Tallest accepted frame in pixels.
        min_side: Smallest accepted frame side in pixels.
        max_fps: Highest accepted frame rate.
        min_fps: Lowest accepted frame rate.
        transcode_max_height: Height the normalised video is scaled down to (never up).
        transcode_fps: Constant frame rate of the normalised video; 0 keeps the source's rate.
    """

    max_duration_s: float = 6 * 3600.0
    min_duration_s: float = 1.0
    max_width: int = 4096
    max_height: int = 2160
    min_side: int = 64
    max_fps: float = 120.0
    min_fps: float = 1.0
    transcode_max_height: int = 480
    transcode_fps: float = 0.0

    def normalised(self, width: int, height: int, fps: float) -> tuple[int, int, float]:
        """Width, height and frame rate of the normalised video made from a source of these."""
        w, h = normalised_size(width, height, self.transcode_max_height)
        return w, h, self.transcode_fps or fps


@dataclass(frozen=True)
class VideoProbe:
    """Facts about a video file, read by PyAV."""

    container: str
    extension: str
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    frame_count_estimate: int
    pixel_format: str
    has_audio: bool
    bit_rate: int | None

    def as_metadata(self) -> dict[str, float | int | str | bool | None]:
        """The probe as a flat dict (Dagster metadata, catalog columns)."""
        return asdict(self)


def _container_name(container: av.container.InputContainer) -> str:
    # FFmpeg reports "mov,mp4,m4a,3gp,3g2,mj2" for the whole ISO family; the first name suffices.
    return container.format.name.split(",")[0]


def probe_video(path: str | Path) -> VideoProbe:
    """Open a video, check that it really decodes from start to end, and describe it.

    Decoding the first frame catches broken streams; seeking to the last second and decoding
    there catches truncated files whose index promises more data than the file holds (the usual
    result of an interrupted copy), without decoding the whole video.

    Args:
        path: Local path of the video.

    Returns:
        The probe.

    Raises:
        VideoValidationError: The file is empty, not a video, truncated or undecodable.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoValidationError("the video file does not exist or is not a regular file.")
    if path.stat().st_size == 0:
        raise VideoValidationError("the video file is empty (0 bytes); upload the recording again.")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise VideoValidationError(
            "the file is not a readable video container (it may be corrupt, truncated or not a "
            "video at all); export the recording again as MP4 (H.264)."
        ) from None
    with container:
        fmt = _container_name(container)
        if not container.streams.video:
            raise VideoValidationError(
                "the file has no video stream (audio-only or data file); upload the video "
                "recording."
            )
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        has_audio = bool(container.streams.audio)
        if codec not in SUPPORTED_CODECS:
            raise VideoValidationError(
                f"the video codec '{codec}' is not supported; re-encode the video as H.264 "
                f"(supported: {', '.join(sorted(SUPPORTED_CODECS))})."
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration_s = _duration_seconds(container, stream)
        first = _decode_first_frame(container, stream)
        if first is None:
            raise VideoValidationError(
                "the video stream cannot be decoded (broken or unsupported encoding); export the "
                "recording again as MP4 (H.264)."
            )
        width, height = first.width, first.height
        pix_fmt = first.format.name
        if duration_s <= 0 or math.isnan(duration_s):
            raise VideoValidationError(
                "the video has no duration (no frames could be timed); export the recording again."
            )
        if duration_s > 2.0 and not _decodes_near(container, stream, duration_s - 1.0):
            raise VideoValidationError(
                "the video is truncated: its end cannot be decoded (an interrupted copy or "
                "upload?); upload the complete file again."
            )
        return VideoProbe(
            container=fmt,
            extension=CONTAINER_EXTENSIONS.get(fmt, "bin"),
            codec=codec,
            width=width,
            height=height,
            fps=round(fps, 3),
            duration_s=round(duration_s, 3),
            frame_count_estimate=int(round(duration_s * fps)) if fps else int(stream.frames),
            pixel_format=pix_fmt,
            has_audio=has_audio,
            bit_rate=container.bit_rate or None,
        )


def _duration_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return float("nan")


def _decode_first_frame(
    container: av.container.InputContainer, stream: av.VideoStream
) -> av.VideoFrame | None:
    try:
        for frame in container.decode(stream):
            return frame
    except (av.error.FFmpegError, ValueError):
        return None
    return None


def _decodes_near(
    container: av.container.InputContainer, stream: av.VideoStream, t_s: float
) -> bool:
    """True if a frame at or after about ``t_s`` seconds decodes (damaged packets skipped)."""
    try:
        offset = int(t_s / stream.time_base) + (stream.start_time or 0)
        container.seek(offset, stream=stream, backward=True, any_frame=False)
        for frame in TolerantDecoder(container, stream).frames():
            if frame.time is not None and frame.time >= t_s - 2.0:
                return True
    except (av.error.FFmpegError, ValueError):
        return False
    return False


def check_limits(probe: VideoProbe, limits: VideoLimits) -> None:
    """Refuse a video outside the configured limits.

    Raises:
        VideoValidationError: naming the limit, the value and the setting that changes it.
    """
    if probe.duration_s > limits.max_duration_s:
        raise VideoValidationError(
            f"the video lasts {probe.duration_s:.0f} s, longer than the limit of "
            f"{limits.max_duration_s:.0f} s; split it or raise SURG_MAX_DURATION_S."
        )
    if probe.duration_s < limits.min_duration_s:
        raise VideoValidationError(
            f"the video lasts {probe.duration_s:.2f} s, shorter than the minimum of "
            f"{limits.min_duration_s:.2f} s; upload the full recording."
        )
    if probe.width > limits.max_width or probe.height > limits.max_height:
        raise VideoValidationError(
            f"the video resolution {probe.width}x{probe.height} exceeds the limit of "
            f"{limits.max_width}x{limits.max_height}; downscale it or raise "
            "SURG_MAX_WIDTH/SURG_MAX_HEIGHT."
        )
    if min(probe.width, probe.height) < limits.min_side:
        raise VideoValidationError(
            f"the video resolution {probe.width}x{probe.height} is below the minimum side of "
            f"{limits.min_side} pixels; upload the original recording."
        )
    if not (limits.min_fps <= probe.fps <= limits.max_fps):
        raise VideoValidationError(
            f"the video frame rate {probe.fps:g} fps is outside {limits.min_fps:g}-"
            f"{limits.max_fps:g} fps; re-encode it at a standard rate such as 25 or 30 fps."
        )


def normalised_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """Output size that keeps the aspect ratio, never upscales, and is even (yuv420p needs it)."""
    if height > max_height:
        width = width * max_height / height
        height = max_height
    w = max(2, int(round(width / 2)) * 2)
    h = max(2, int(round(height / 2)) * 2)
    return w, h


@dataclass(frozen=True)
class DecodeGap:
    """A stretch of a video whose pictures could not be decoded (damaged packets)."""

    start_s: float
    end_s: float
    packets: int


class TolerantDecoder:
    """Decodes a video stream packet by packet, skipping damaged packets instead of failing.

    A recording damaged in the middle (a bad sector, a dropped network chunk) still holds hours
    of good surgery: the decoder refuses the damaged packets (and the pictures that reference
    them), and decoding carries on from the next picture it can rebuild. What was lost is kept as
    :class:`DecodeGap` intervals so the analysis can say so instead of pretending the video is
    whole. Times are presentation times in seconds from the stream's first decoded picture.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.VideoStream) -> None:
        self.container = container
        self.stream = stream
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self.frame_s = 1.0 / float(rate)
        self.bad_times: list[float] = []
        self.good_times: list[float] = []

    def frames(self) -> Iterator[av.VideoFrame]:
        """Every decodable picture, in presentation order (damaged ones left out)."""
        for packet in self.container.demux(self.stream):
            try:
                decoded = self.stream.decode(packet)
            except (av.error.InvalidDataError, av.error.UndefinedError):
                if packet.pts is not None:
                    self.bad_times.append(float(packet.pts * packet.time_base))
                continue
            for frame in decoded:
                if frame.time is None:
                    continue
                if frame.is_corrupt:
                    self.bad_times.append(float(frame.time))
                    continue
                self.good_times.append(float(frame.time))
                yield frame

    def gaps(self) -> list[DecodeGap]:
        """The lost stretches: each damaged packet widened to the hole around it, then merged.

        A hole runs from just after the last good picture before a damaged packet to the first
        good picture after it, since pictures predicted from a damaged one are lost too.
        """
        if not self.bad_times:
            return []
        good = np.sort(np.asarray(self.good_times, dtype=np.float64))
        t0 = float(good[0]) if len(good) else min(self.bad_times)
        spans: list[list[float]] = []
        for t in sorted(self.bad_times):
            i = int(np.searchsorted(good, t, side="right"))
            start = float(good[i - 1]) + self.frame_s if i > 0 else t
            end = float(good[i]) if i < len(good) else t + self.frame_s
            start, end = min(start, t), max(end, t + self.frame_s)
            if spans and start <= spans[-1][1] + 1e-6:
                spans[-1][1] = max(spans[-1][1], end)
                spans[-1][2] += 1
            else:
                spans.append([start, end, 1])
        return [
            DecodeGap(round(max(0.0, a - t0), 3), round(max(0.0, b - t0), 3), int(n))
            for a, b, n in spans
        ]


@dataclass(frozen=True)
class TranscodeResult:
    """What the normaliser wrote."""

    width: int
    height: int
    fps: float
    frames_written: int
    frames_duplicated: int
    frames_dropped: int
    duration_s: float
    decode_gaps: tuple[DecodeGap, ...] = ()


# x264 preset of the normalised video. "superfast" encodes the 854x480 real clip in 4.7 CPU s
# against 8.5 for "veryfast" (same CRF 23; file 38% larger): the transcode is about a sixth of a
# case's CPU time, and the normalised video is an internal rendition, not an archive copy.
TRANSCODE_PRESET = "superfast"


def normalised_encoder_options(rate: Fraction) -> dict[str, str]:
    """x264 options of the normalised video: the transcode writes with them, and
    de-identification re-encodes with them the stretches it splices back into that video (the
    splice needs the very same parameter sets, so there is one definition)."""
    gop = max(1, int(round(float(rate))))
    return {
        "preset": TRANSCODE_PRESET,
        "crf": "23",
        # A closed GOP of exactly one second: every second is a clean seek point.
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
    }


def transcode(
    src: str | Path,
    dst: str | Path,
    limits: VideoLimits,
    progress: Callable[[float], None] | None = None,
) -> TranscodeResult:
    """Normalise a video: H.264 yuv420p, constant frame rate, bounded height, seekable.

    The output has a keyframe every second (the player and the chunked detectors seek a lot),
    the moov atom up front (``faststart``: playback starts before the download ends), no audio
    (operating-room audio is identifying and useless to the models) and no container metadata
    (recorders write patient and device details there).

    Variable frame rate input is mapped onto a constant grid: each output slot takes the newest
    source frame at or before it, so frames are duplicated to fill gaps and dropped when the
    source runs faster than the grid. Damaged packets in the middle are skipped the same way
    (the previous picture fills their slots) and reported in ``decode_gaps``.

    Args:
        src: Validated source video.
        dst: Output path (``.mp4``); written completely or not at all by the caller's atomic put.
        limits: Normalisation settings (height, frame rate).
        progress: Called with the fraction done (0..1) now and then.

    Returns:
        Facts about the written video.
    """
    probe = probe_video(src)
    width, height, fps = limits.normalised(probe.width, probe.height, probe.fps)
    rate = Fraction(fps).limit_denominator(1001)
    written = duplicated = dropped = 0
    last_frame: av.VideoFrame | None = None
    with (
        av.open(str(src)) as inp,
        av.open(
            str(dst), mode="w", format="mp4", container_options={"movflags": "+faststart"}
        ) as out,
    ):
        ins = inp.streams.video[0]
        ins.thread_type = "AUTO"
        ost = out.add_stream("libx264", rate=rate)
        ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
        gop = max(1, int(round(float(rate))))
        ost.codec_context.gop_size = gop
        ost.options = normalised_encoder_options(rate)
        ost.codec_context.time_base = 1 / rate
        t0: float | None = None
        next_slot = 0
        decoder = TolerantDecoder(inp, ins)
        for frame in decoder.frames():
            if t0 is None:
                t0 = frame.time
            slot = int(math.floor((frame.time - t0) * float(rate) + 0.5))
            if slot < next_slot:
                dropped += 1
                continue
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            while next_slot < slot and last_frame is not None:
                # A gap in a variable-rate source: repeat the previous picture.
                _encode(out, ost, last_frame, next_slot)
                next_slot += 1
                duplicated += 1
                written += 1
            next_slot = max(next_slot, slot)
            _encode(out, ost, scaled, next_slot)
            next_slot += 1
            written += 1
            last_frame = scaled
            if progress and written % 250 == 0 and probe.duration_s > 0:
                progress(min(1.0, written / float(rate) / probe.duration_s))
        for packet in ost.encode():
            out.mux(packet)
    if written == 0:
        raise VideoValidationError("the video has no decodable frames; upload the recording again.")
    if progress:
        progress(1.0)
    return TranscodeResult(
        width=width,
        height=height,
        fps=float(rate),
        frames_written=written,
        frames_duplicated=duplicated,
        frames_dropped=dropped,
        duration_s=written / float(rate),
        decode_gaps=tuple(decoder.gaps()),
    )


def _encode(
    out: av.container.OutputContainer, ost: av.VideoStream, frame: av.VideoFrame, slot: int
) -> None:
    frame.pts = slot
    frame.time_base = ost.codec_context.time_base
    for packet in ost.encode(frame):
        out.mux(packet)


def write_sample_video(
    path: str | Path,
    seconds: float = 4.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    container_format: str | None = None,
    with_audio: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a small deterministic test video: a moving bright disc on a reddish gradient.

    Used by the demo and the tests (the lab's synthetic generator makes the realistic ones).

    Args:
        path: Output file.
        seconds: Length.
        fps: Frame rate.
        size: (width, height).
        codec: FFmpeg encoder name (``libx264``, ``mpeg4``, ``ffv1``...).
        container_format: Container (defaults to the extension's).
        with_audio: Add a silent AAC track (to check that normalisation drops it).
        metadata: Container metadata tags (to check that normalisation strips them).

    Returns:
        The path written.
    """
    path = Path(path)
    w, h = size
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = (120 + 80 * xx / max(1, w - 1)).astype(np.uint8)
    base[..., 1] = (40 + 40 * yy / max(1, h - 1)).astype(np.uint8)
    base[..., 2] = 50
    with av.open(str(path), mode="w", format=container_format) as out:
        if metadata:
            out.metadata.update(metadata)
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if codec in ("libx264", "mpeg4", "libx265") else vs.pix_fmt
        audio = None
        if with_audio:
            audio = out.add_stream("aac", rate=44100)
        for i in range(n):
            img = base.copy()
            cx = int((0.2 + 0.6 * i / max(1, n - 1)) * w)
            cy = h // 2 + int(0.2 * h * math.sin(i / 6))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (min(w, h) // 8) ** 2
            img[disc] = (230, 230, 210)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in vs.encode(frame):
                out.mux(packet)
            if audio is not None:
                samples = 44100 // fps
                af = av.AudioFrame.from_ndarray(
                    np.zeros((1, samples), np.float32), format="fltp", layout="mono"
                )
                af.sample_rate = 44100
                af.pts = i * samples
                for packet in audio.encode(af):
                    out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if audio is not None:
            for packet in audio.encode():
                out.mux(packet)
    return path


# Container tags FFmpeg always writes itself; anything else came from the source.
_STRUCTURAL_TAGS = frozenset(
    {
        "major_brand",
        "minor_version",
        "compatible_brands",
        "encoder",
        "language",
        "handler_name",
        "vendor_id",
    }
)


@dataclass(frozen=True)
class StreamLayout:
    """How a video is laid out: what the normalisation contract is checked against."""

    codec: str
    pixel_format: str
    width: int
    height: int
    fps: float
    frame_count: int
    has_audio: bool
    max_keyframe_gap_s: float
    constant_frame_rate: bool
    faststart: bool
    foreign_tags: dict[str, str]


def video_frame_size(video: VideoSource) -> tuple[int, int]:
    """(width, height) of a video's first video stream, from its header alone (nothing is
    demuxed or decoded: through a ranged reader, only the index at the front is read)."""
    with open_video(video) as container:
        codec = container.streams.video[0].codec_context
        return codec.width, codec.height


def inspect_layout(path: VideoSource) -> StreamLayout:
    """Read packet timing and keyframes (no decoding) to check a normalised video's contract."""
    if isinstance(path, str | Path):
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    else:
        path.seek(0)
        head = path.read(1 << 16)
    moov, mdat = head.find(b"moov"), head.find(b"mdat")
    faststart = moov != -1 and (mdat == -1 or moov < mdat)
    with open_video(path) as c:
        vs = c.streams.video[0]
        tags = {**c.metadata, **vs.metadata}
        foreign = {k: v for k, v in tags.items() if k not in _STRUCTURAL_TAGS}
        times: list[float] = []
        key_times: list[float] = []
        for packet in c.demux(vs):
            if packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            times.append(t)
            if packet.is_keyframe:
                key_times.append(t)
        times.sort()
        deltas = np.diff(np.asarray(times)) if len(times) > 1 else np.zeros(0)
        fps = float(vs.average_rate) if vs.average_rate else 0.0
        constant = bool(len(deltas) == 0 or (np.ptp(deltas) < 1e-3))
        gaps = np.diff(np.asarray(key_times + [times[-1] if times else 0.0]))
        return StreamLayout(
            codec=vs.codec_context.name,
            pixel_format=vs.codec_context.pix_fmt or "",
            width=vs.codec_context.width,
            height=vs.codec_context.height,
            fps=fps,
            frame_count=len(times),
            has_audio=bool(c.streams.audio),
            max_keyframe_gap_s=float(gaps.max()) if len(gaps) else 0.0,
            constant_frame_rate=constant,
            faststart=faststart,
            foreign_tags=foreign,
        )


@dataclass
class SampledFrame:
    """One decoded frame chosen for inference (BGR, the OpenCV and ultralytics convention)."""

    frame_index: int
    t_s: float
    bgr: np.ndarray


def may_be_sampled(t_s: float, frame_s: float, step_s: float) -> bool:
    """Whether the picture shown at ``t_s`` can be the first at or after a sampling time.

    True when a multiple of ``step_s`` lies in ``(t_s - frame_s, t_s]``: on a constant frame
    rate grid exactly the pictures :func:`sample_frames` picks. A picture after a gap longer
    than ``frame_s`` (variable frame rate) may be picked without passing this test, so callers
    only use it to skip work that is otherwise repeated, never to decide what is sampled.
    """
    last_grid = np.floor(t_s / step_s + 1e-6) * step_s
    return bool(last_grid > t_s - frame_s + 1e-6)


def _decode_skipping(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    rate: float,
    step_s: float,
    skipping: bool,
) -> Iterator[av.VideoFrame]:
    """Decoded pictures in presentation order; with ``skipping``, non-reference pictures that
    cannot be sampled are dropped by the decoder before it decodes them (FFmpeg's
    ``skip_frame=NONREF``, set packet by packet; frame threads copy it when a packet is sent)."""
    if not skipping:
        yield from container.decode(stream)
        return
    ctx = stream.codec_context
    frame_s = 1.0 / rate
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            wanted = may_be_sampled(float(packet.pts * packet.time_base), frame_s, step_s)
            ctx.skip_frame = "DEFAULT" if wanted else "NONREF"
        elif packet.size == 0:  # the final flush: every picture still inside counts
            ctx.skip_frame = "DEFAULT"
        yield from stream.decode(packet)


def sample_frames(
    path: VideoSource,
    sample_fps: float,
    max_queue: int = 32,
    start_s: float = 0.0,
    end_s: float | None = None,
    every_frame: Callable[[av.VideoFrame], None] | None = None,
) -> Iterator[SampledFrame]:
    """Decode ``path`` in a background thread; yield about ``sample_fps`` frames per second.

    The queue is bounded, so a slow consumer (the model) holds the decoder back instead of
    letting decoded frames pile up: memory stays flat however long the video is. ``start_s`` and
    ``end_s`` restrict decoding to a time range (a chunk of a long video): the decoder seeks to
    the keyframe before ``start_s``, and the sampling grid stays aligned to the video's start, so
    chunks sample exactly the frames a whole pass would. ``every_frame``, when given, is called
    (in the decoding thread) with every decoded frame in range, sampled or not, for cheap
    full-rate statistics; it has seen them all once the iterator is exhausted.
    """
    q: queue.Queue[SampledFrame | BaseException | None] = queue.Queue(maxsize=max_queue)
    stop = threading.Event()

    def decode() -> None:
        try:
            with open_video(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                rate = float(stream.average_rate or stream.guessed_rate or 25)
                step = 1.0 / sample_fps
                if start_s > 0:
                    container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
                next_t = np.ceil(start_s / step - 1e-6) * step
                # Pictures no other picture is predicted from (H.264 non-reference B-frames,
                # about half of an x264 stream) are not decoded unless they may be sampled:
                # the decoder's work shrinks with the sampling rate, and the sampled pictures
                # are bit-identical to a full decode. ``every_frame`` needs them all.
                skipping = every_frame is None and sample_fps < rate
                for frame in _decode_skipping(container, stream, rate, step, skipping):
                    if stop.is_set():
                        return
                    t = float(frame.time or 0.0)
                    if end_s is not None and t >= end_s - 1e-6:
                        break
                    if every_frame is not None and t + 1e-6 >= start_s:
                        every_frame(frame)
                    if t + 1e-6 < next_t:
                        continue
                    # Whole-step jumps keep the grid aligned to the video's start.
                    next_t = (np.floor(t / step + 1e-6) + 1) * step
                    index = int(round(t * rate))  # constant frame rate: time gives the index
                    q.put(SampledFrame(index, t, frame.to_ndarray(format="bgr24")))
            q.put(None)
        except BaseException as exc:  # surfaced to the consumer thread
            q.put(exc)

    worker = threading.Thread(target=decode, name="surg-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():  # unblock the producer so it can exit
            q.get_nowait()
        # A consumer that stops early (an error downstream) goes on to close what the decoder
        # reads from (a ranged reader over the lake): let the decoder finish its frame first.
        # It checks ``stop`` after each frame and puts at most one more into the emptied queue.
        worker.join(timeout=10)
