"""Reading and writing video files with PyAV, one frame at a time.

`VideoReader` decodes a clip's first video stream into HxWx3 uint8 RGB arrays, as stored (not
turned upright: the writer keeps the rotation, see below), with each frame's timestamp.
`write_video` encodes such frames into a new file next to the output, renamed into place only
when the clip is complete (stylize.atomic), so an error or Ctrl-C leaves nothing under the
output name. Audio streams are copied packet by packet (remuxed, never re-encoded), read from the
source in step with the video so that memory stays flat whatever the length.

Encoders: H.264 (yuv420p, CRF) in mp4, mov and mkv; VP9 (CRF) in webm; MPEG-4 Part 2 in avi;
GIF for .gif, with a palette per frame. PyAV is imported only here, when a video is opened, so
the CLI starts fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stylize.atomic import atomic_path, check_target
from stylize.engine.settings import MIN_IMAGE_SIZE
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import av

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif"})
# FFmpeg's muxer for each suffix: the temporary file's name ends in .tmp, which names none.
_MUXERS = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".gif": "gif",
}
# The quality setting, `crf`: lower is better and larger. H.264's CRF 18 keeps the fine brush
# texture of a stylized frame, which its default 23 smears; VP9's scale differs and 31 is its
# equivalent. AVI gets MPEG-4 Part 2 (H.264 in AVI has no way to reorder B-frames' timestamps:
# the frames come back one frame late), whose quality is a fixed quantizer, 2 best.
DEFAULT_CRF = {"h264": 18, "vp9": 31, "mpeg4": 3}
CRF_RANGE = {"h264": (0, 51), "vp9": (0, 63), "mpeg4": (2, 31)}
# FFmpeg's lambda per quantizer step (FF_QP2LAMBDA): a fixed quantizer is asked as q * 118.
_QP2LAMBDA = 118
# Audio is muxed up to this far ahead of the video written so far (seconds), so that the file is
# interleaved without holding more than a second or so of packets.
_AUDIO_LEAD_S = 0.5


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's first video stream says about itself.

    `width` and `height` are the stored frame size. `rotation` is the angle, counter-clockwise
    in degrees (0, 90, 180 or 270), by which players turn the stored frames to show them (the
    display matrix; PyAV's `VideoFrame.rotation`): frames are read and written as stored and the
    rotation travels as metadata. `duration` (seconds) and `frame_count` are None when the file
    does not say.
    """

    path: Path
    container: str
    codec: str
    width: int
    height: int
    frame_rate: Fraction
    time_base: Fraction
    rotation: int
    duration: float | None
    frame_count: int | None
    audio_codecs: tuple[str, ...]

    @property
    def is_gif(self) -> bool:
        return self.codec == "gif"


@dataclass(frozen=True)
class Frame:
    """One decoded frame: `image` HxWx3 uint8 RGB, `pts` in the stream's time base."""

    image: np.ndarray
    pts: int


def is_video(path: Path | str) -> bool:
    """Whether `path`'s suffix names a video stylize reads (animated GIFs included)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """`image` turned as a player shows it: `rotation` degrees counter-clockwise."""
    return np.ascontiguousarray(np.rot90(image, k=(rotation // 90) % 4))


class VideoReader:
    """A clip opened for streaming: `info` at once, then `frames()` one at a time.

    Opening checks what can be checked before any work: a readable container, a video stream,
    a decoder for it, a first frame that decodes, frames of at least MIN_IMAGE_SIZE a side.
    Failures are StylizeErrors of one line, as are corrupt or truncated data found later.
    """

    def __init__(self, path: Path | str) -> None:
        import av

        self.path = Path(path)
        try:
            self._container: av.container.InputContainer = av.open(str(self.path), "r")
        except FileNotFoundError:
            raise StylizeError(f"cannot read {self.path}: no such file") from None
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise StylizeError(
                f"cannot read {self.path}: not a video file, or corrupt ({_reason(error)})"
            ) from None
        try:
            self.info = self._probe()
        except BaseException:
            self._container.close()
            raise

    def _probe(self) -> VideoInfo:
        container = self._container
        if not container.streams.video:
            raise StylizeError(f"cannot read {self.path}: it has no video stream")
        stream = container.streams.video[0]
        self._stream = stream
        codec = _codec_name(stream)
        if codec is None:
            raise StylizeError(f"cannot read {self.path}: its video codec is not supported")
        stream.thread_type = "AUTO"  # frame threads: decoding keeps up with the network
        self._pending = self._decode()
        first = next(self._pending, None)
        if first is None:
            raise StylizeError(f"cannot read {self.path}: its video stream holds no frames")
        self._first = first
        height, width = first.image.shape[:2]
        if min(width, height) < MIN_IMAGE_SIZE:
            raise StylizeError(
                f"cannot stylize {self.path}: frames too small ({width}x{height}): at least "
                f"{MIN_IMAGE_SIZE} pixels a side"
            )
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        if stream.duration is not None:
            duration: float | None = float(stream.duration * time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = None
        audio = tuple(_codec_name(audio) or "unknown" for audio in container.streams.audio)
        return VideoInfo(
            path=self.path,
            container=container.format.name,
            codec=codec,
            width=width,
            height=height,
            frame_rate=Fraction(rate),
            time_base=Fraction(time_base),
            rotation=self._rotation,
            duration=duration,
            frame_count=stream.frames or None,
            audio_codecs=audio,
        )

    def frames(self) -> Iterator[Frame]:
        """The frames in display order; once only (this is a stream)."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._pending

    def _decode(self) -> Iterator[Frame]:
        import av

        last_pts: int | None = None
        step = 1
        decoded = self._container.decode(self._stream)
        count = 0
        self._rotation = 0
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except av.FFmpegError as error:
                raise StylizeError(
                    f"cannot read {self.path}: corrupt or truncated after {count} frames "
                    f"({_reason(error)})"
                ) from None
            if count == 0:
                self._rotation = _frame_rotation(frame, self._stream)
                size = (frame.width, frame.height)
            elif (frame.width, frame.height) != size:
                # The writer and the stabilizer need one size (a stream spliced from clips).
                raise StylizeError(
                    f"cannot read {self.path}: its frame size changes from {size[0]}x{size[1]} "
                    f"to {frame.width}x{frame.height} at frame {count + 1}; stylize takes clips "
                    "of one size"
                )
            pts = frame.pts
            if pts is None:
                # Containers without timestamps (raw streams, some AVIs): one frame period on.
                pts = 0 if last_pts is None else last_pts + step
            elif last_pts is not None and pts > last_pts:
                step = pts - last_pts
            image = frame.to_ndarray(format="rgb24")
            count += 1
            last_pts = pts
            yield Frame(image, pts)
        expected = self._stream.frames
        # A container that counted its frames and delivered fewer was cut short: writing what
        # decoded would pass a truncated clip off as whole.
        if expected and count < expected:
            raise StylizeError(
                f"cannot read {self.path}: truncated ({count} of {expected} frames decode)"
            )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: Path | str) -> VideoReader:
    """`VideoReader(path)`, for `with open_video(path) as reader:`."""
    return VideoReader(path)


def check_video_output(path: Path | str, *, overwrite: bool = False) -> None:
    """Fails unless `write_video` can write `path`: a video suffix, an existing folder, no file
    there unless `overwrite`."""
    check_target(Path(path), _MUXERS, "video", overwrite=overwrite)


def video_codec_for(path: Path | str) -> str:
    """The encoder family `write_video` uses for `path`'s suffix: "h264", "vp9", "mpeg4" (avi)
    or "gif"."""
    suffix = Path(path).suffix.lower()
    return {".webm": "vp9", ".gif": "gif", ".avi": "mpeg4"}.get(suffix, "h264")


@contextmanager
def write_video(
    path: Path | str,
    source: VideoInfo,
    *,
    crf: int | None = None,
    overwrite: bool = False,
) -> Iterator[VideoWriter]:
    """Yields a `VideoWriter` for frames of `source`'s size, timing and rotation, whose audio
    it copies; the file appears at `path` only if the block ends without an exception."""
    path = Path(path)
    check_video_output(path, overwrite=overwrite)
    codec = video_codec_for(path)
    if crf is not None and codec != "gif":
        low, high = CRF_RANGE[codec]
        if not low <= crf <= high:
            raise StylizeError(f"crf must be between {low} and {high} for {codec}, got {crf}")
    with atomic_path(path, overwrite=overwrite) as temporary:
        writer = VideoWriter(temporary, path, source, codec, crf)
        try:
            yield writer
            writer.finish()
        finally:
            writer.close()


class VideoWriter:
    """Encodes frames into `temporary` (see `write_video`, which owns the file's lifetime).

    `size` is the encoded frame size: H.264 in 4:2:0 needs even sides, so an odd side gets one
    edge pixel repeated, which `adjustment` says in words for the caller to report.
    `rotation_applied` is True where this PyAV cannot write a display matrix (before 18.1): the
    frames are then turned upright before encoding, so players still show them the same way.
    """

    def __init__(
        self, temporary: Path, path: Path, source: VideoInfo, codec: str, crf: int | None
    ) -> None:
        import av

        self.path = path
        self.source = source
        self.codec = codec
        self.frames_written = 0
        self.audio_dropped = False
        self.adjustment: str | None = None
        self._closed = False
        self._last_pts: int | None = None
        self._output = av.open(str(temporary), "w", format=_MUXERS[path.suffix.lower()])
        self._audio_input: Any = None
        self._audio: Iterator[Any] = iter(())
        self._next_audio: Any = None
        self._audio_map: dict[int, Any] = {}
        try:
            self._video = self._add_video_stream(crf)
            self._add_audio_streams()
        except BaseException:
            self.close()
            raise

    def _add_video_stream(self, crf: int | None) -> Any:
        source = self.source
        turns = source.rotation // 90 % 4
        can_rotate = hasattr(_video_stream_type(), "set_display_rotation")
        self.rotation_applied = bool(turns) and not can_rotate
        width, height = source.width, source.height
        if self.rotation_applied and turns % 2:
            width, height = height, width
        options: dict[str, str] = {}
        if self.codec == "h264":
            name = "libx264"
            pix_fmt = "yuv420p"
            options["crf"] = str(DEFAULT_CRF["h264"] if crf is None else crf)
            # x264's "faster" preset, measured on stylized 640x360 frames at CRF 18: 15 ms of
            # CPU a frame against 23 for the default "medium", and a file 4% smaller.
            options["preset"] = "faster"
            if width % 2 or height % 2:
                padded = (width + width % 2, height + height % 2)
                self.adjustment = (
                    f"H.264 needs even frame sides: {width}x{height} frames are written as "
                    f"{padded[0]}x{padded[1]}, repeating the last column or row"
                )
                width, height = padded
        elif self.codec == "vp9":
            name = "libvpx-vp9"
            pix_fmt = "yuv420p"
            # Constant quality (b=0 with crf); row threads and cpu-used 4 keep it fast.
            options.update(crf=str(DEFAULT_CRF["vp9"] if crf is None else crf), b="0")
            options.update({"row-mt": "1", "cpu-used": "4"})
        elif self.codec == "mpeg4":
            name, pix_fmt = "mpeg4", "yuv420p"
            quantizer = DEFAULT_CRF["mpeg4"] if crf is None else crf
            options.update(flags="+qscale", global_quality=str(quantizer * _QP2LAMBDA))
        else:
            name, pix_fmt = "gif", "pal8"
        stream = self._output.add_stream(name, rate=source.frame_rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        # The source's clock, so each frame keeps its timestamp (variable rates included).
        stream.codec_context.time_base = source.time_base
        stream.time_base = source.time_base
        if turns and can_rotate:
            stream.set_display_rotation(source.rotation)
        self.size = (width, height)
        return stream

    def _add_audio_streams(self) -> None:
        import av

        if not self.source.audio_codecs:
            return
        if self.codec == "gif":
            self.audio_dropped = True  # GIF has no sound
            return
        self._audio_input = av.open(str(self.source.path), "r")
        inputs = list(self._audio_input.streams.audio)
        for stream in inputs:
            try:
                if hasattr(self._output, "add_stream_from_template"):
                    copy = self._output.add_stream_from_template(stream)
                else:  # PyAV before 14
                    copy = self._output.add_stream(template=stream)
            except (av.FFmpegError, ValueError) as error:
                raise StylizeError(
                    f"cannot write {self.path}: cannot copy the audio ({_codec_name(stream)}) "
                    f"into a {self.path.suffix} file ({_reason(error)}); choose .mkv or .mp4"
                ) from None
            self._audio_map[stream.index] = copy
        self._audio = (
            packet for packet in self._audio_input.demux(*inputs) if packet.dts is not None
        )
        self._next_audio = next(self._audio, None)

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encodes one HxWx3 uint8 RGB frame of the source's stored size at `pts` (in the
        source's time base; None: one frame period after the last)."""
        import av

        if image.shape != (self.source.height, self.source.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a {self.source.height}x{self.source.width}x3 uint8 frame, got "
                f"{image.shape} {image.dtype}"
            )
        period = max(1, round(1 / (self.source.frame_rate * self.source.time_base)))
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + period
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # encoders refuse timestamps that do not increase
        self._last_pts = pts
        if self.rotation_applied:
            image = upright(image, self.source.rotation)
        width, height = self.size
        if image.shape[:2] != (height, width):
            pad = ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0))
            image = np.pad(image, pad, mode="edge")
        frame = _gif_frame(image) if self.codec == "gif" else av.VideoFrame.from_ndarray(image)
        frame.pts = pts
        frame.time_base = self.source.time_base
        self._mux_audio_until(float(pts * self.source.time_base) + _AUDIO_LEAD_S)
        self._encode(frame)
        self.frames_written += 1

    def _encode(self, frame: Any) -> None:
        import av

        try:
            for packet in self._video.encode(frame):
                self._output.mux(packet)
        except av.FFmpegError as error:
            raise StylizeError(f"cannot write {self.path}: {_reason(error)}") from None

    def _mux_audio_until(self, seconds: float) -> None:
        while self._next_audio is not None:
            packet = self._next_audio
            if packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                return
            packet.stream = self._audio_map[packet.stream.index]
            self._output.mux(packet)
            self._next_audio = next(self._audio, None)

    def finish(self) -> None:
        """Flushes the encoder and the rest of the audio; `write_video` calls it."""
        if self.frames_written == 0:
            raise StylizeError(f"cannot write {self.path}: no frames were given")
        self._encode(None)
        self._mux_audio_until(math.inf)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._output.close()
        finally:
            if self._audio_input is not None:
                self._audio_input.close()


def _video_stream_type() -> type:
    from av.video.stream import VideoStream

    return VideoStream


def _gif_frame(image: np.ndarray) -> Any:
    """A pal8 frame with this frame's own 256-color palette (median cut, dithered): FFmpeg's
    own rgb24 -> pal8 conversion uses one fixed palette that bands every gradient."""
    import av
    from PIL import Image

    quantized = Image.fromarray(image).quantize(256)
    colors = np.zeros((256, 4), np.uint8)
    palette = np.frombuffer(bytes(quantized.getpalette() or []), np.uint8).reshape(-1, 3)[:256]
    # PyAV takes the palette as rows of A, R, G, B bytes (PyAV 13 to 18 alike).
    colors[:, 0] = 255
    colors[: len(palette), 1:] = palette
    indices = np.asarray(quantized, dtype=np.uint8)
    return av.VideoFrame.from_ndarray((indices, colors), format="pal8")


def _frame_rotation(frame: Any, stream: Any) -> int:
    """The display matrix's rotation (counter-clockwise degrees, a multiple of 90), from the
    frame's side data (FFmpeg 7 copies the container's matrix there) or the stream's legacy
    `rotate` tag (clockwise)."""
    for side_data in frame.side_data:
        if getattr(side_data.type, "name", "") == "DISPLAYMATRIX":
            matrix = np.frombuffer(bytes(side_data)[:36], dtype="=i4").astype(np.float64)
            scale_x, scale_y = math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4])
            if scale_x and scale_y:
                angle = -math.degrees(math.atan2(matrix[1] / scale_y, matrix[0] / scale_x))
                return round(angle / 90) * 90 % 360
    tag = stream.metadata.get("rotate")
    try:
        return round(-float(tag) / 90) * 90 % 360 if tag else 0
    except ValueError:
        return 0


def _codec_name(stream: Any) -> str | None:
    """The stream's decoder name, None when FFmpeg has none for it."""
    try:
        context = stream.codec_context
    except Exception:  # PyAV raises different errors for an unknown codec across versions
        return None
    if context is None:
        return None
    name = getattr(context, "name", None)
    return None if not name or name == "none" else name


def _reason(error: BaseException) -> str:
    """FFmpeg's own words, without PyAV's errno and file name decorations."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())
