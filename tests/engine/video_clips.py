"""Small test clips made with PyAV, with their true motion known.

Each maker renders frames from a real photo (docs/gallery/inputs) and returns, besides the
frames, the true backward flow of each frame pair (current -> previous, x then y, pixels) and
the mask of pixels that motion does not occlude, for the warping error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

PHOTO = Path(__file__).parents[2] / "docs" / "gallery" / "inputs" / "chelsea.jpg"


def photo(width: int, height: int) -> np.ndarray:
    """The test photo resized to `width` x `height`, HxWx3 uint8."""
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


def pan(
    count: int, width: int, height: int, step: tuple[int, int] = (2, 1)
) -> tuple[list[np.ndarray], np.ndarray]:
    """A camera moving `step` pixels a frame (right, down) across the photo: frame t at p shows
    frame t-1 at p + step. Returns the frames and the constant backward flow."""
    dx, dy = step
    scene = photo(width + abs(dx) * count, height + abs(dy) * count)
    x0 = 0 if dx >= 0 else abs(dx) * count
    y0 = 0 if dy >= 0 else abs(dy) * count
    frames = [
        np.ascontiguousarray(
            scene[y0 + dy * t : y0 + dy * t + height, x0 + dx * t : x0 + dx * t + width]
        )
        for t in range(count)
    ]
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return frames, flow


def zoom(
    count: int, width: int, height: int, factor: float = 1.02
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A zoom into the photo's centre by `factor` a frame. Frame t at p shows the scene at
    c + (p - c) / factor**t, so frame t at p is frame t-1 at c + (p - c) / factor. Returns the
    frames and the backward flow of each pair (the same for all)."""
    scene = photo(width * 2, height * 2)
    centre = np.array([(width * 2 - 1) / 2, (height * 2 - 1) / 2])
    out_centre = np.array([(width - 1) / 2, (height - 1) / 2])
    frames = []
    for t in range(count):
        scale = 1.25 * factor**t  # start zoomed in a little: no border ever shows
        matrix = np.array(
            [
                [scale, 0, out_centre[0] - scale * centre[0]],
                [0, scale, out_centre[1] - scale * centre[1]],
            ]
        )
        frames.append(
            cv2.warpAffine(
                scene, matrix, (width, height), flags=cv2.INTER_AREA | cv2.WARP_FILL_OUTLIERS
            )
        )
    rows, columns = np.indices((height, width), dtype=np.float32)
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0] = (columns - out_centre[0]) * (1 / factor - 1)
    flow[..., 1] = (rows - out_centre[1]) * (1 / factor - 1)
    return frames, [flow] * (count - 1)


def moving_object(
    count: int, width: int, height: int, step: int = 3, side: int = 20
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A square (the photo, small and inverted) sliding `step` pixels a frame to the right
    over the still photo. Returns frames, backward flows and non-occlusion masks (the
    background the square uncovers has no source in the previous frame)."""
    background = photo(width, height)
    # The photo inverted: an object that stands out, with texture for the flow to follow.
    patch = np.ascontiguousarray(255 - photo(side, side))
    top = (height - side) // 2
    frames, flows, masks = [], [], []
    for t in range(count):
        frame = background.copy()
        left = 2 + step * t
        frame[top : top + side, left : left + side] = patch[:, : max(0, min(side, width - left))]
        frames.append(frame)
        if t:
            flow = np.zeros((height, width, 2), np.float32)
            inside = np.zeros((height, width), bool)
            inside[top : top + side, left : min(width, left + side)] = True
            flow[inside, 0] = -step
            before = np.zeros((height, width), bool)
            before[top : top + side, left - step : min(width, left - step + side)] = True
            flows.append(flow)
            masks.append(~(before & ~inside))
    return frames, flows, masks


def tone(seconds: float, rate: int = 48000, pitch: float = 440.0) -> np.ndarray:
    """A sine tone, float32 samples in [-0.5, 0.5], one channel."""
    time = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * pitch * time)).astype(np.float32)


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 24,
    codec: str = "libx264",
    audio: str | None = None,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encodes `frames` (HxWx3 uint8) at `fps`, with a one-channel tone in `audio` (an audio
    encoder name: "aac", "libopus") lasting as long as the video."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format=container_format, options=options or {}) as output:
        if codec == "gif":
            stream = output.add_stream("gif", rate=fps)
            stream.pix_fmt = "rgb8"
        else:
            stream = output.add_stream(codec, rate=fps)
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = width, height
        sound = None
        if audio is not None:
            sound = output.add_stream(audio, rate=48000)
            _set_mono(sound)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if sound is not None:
            samples = tone(len(frames) / fps)
            chunk = 960  # 20 ms: a frame size every audio encoder here accepts
            for start in range(0, len(samples) - chunk + 1, chunk):
                piece = av.AudioFrame.from_ndarray(
                    samples[None, start : start + chunk], format="flt", layout="mono"
                )
                piece.sample_rate = 48000
                piece.pts = start
                for packet in sound.encode(piece):
                    output.mux(packet)
            for packet in sound.encode():
                output.mux(packet)
    return path


def write_sound_only(path: Path, seconds: float = 0.5) -> Path:
    """A file with an Opus tone and no video stream."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libopus", rate=48000)
        _set_mono(stream)
        samples = tone(seconds)
        for start in range(0, len(samples) - 959, 960):
            piece = av.AudioFrame.from_ndarray(
                samples[None, start : start + 960], format="flt", layout="mono"
            )
            piece.sample_rate, piece.pts = 48000, start
            for packet in stream.encode(piece):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def _set_mono(stream: av.audio.stream.AudioStream) -> None:
    stream.layout = "mono"
    stream.format = "fltp" if stream.codec_context.name != "libopus" else "flt"


def read_all(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream


def audio_packets(path: Path) -> list[bytes]:
    """The payloads of `path`'s audio packets, in order."""
    with av.open(str(path)) as container:
        return [
            bytes(packet) for packet in container.demux(container.streams.audio[0]) if packet.size
        ]


def rotate_mp4(path: Path, degrees: int) -> None:
    """Rewrites the first track's (the video's) tkhd matrix so players turn it `degrees`
    counter-clockwise: a rotated clip without needing PyAV to write display matrices."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    version = data[box + 4]
    matrix_at = box + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    one, zero = 0x10000, 0
    angle = degrees % 360
    cos, sin = {0: (one, 0), 90: (0, one), 180: (-one, 0), 270: (0, -one)}[angle]
    # a, b, u, c, d, v, x, y, w in 16.16 fixed point (u, v, w 2.30), as FFmpeg's mov muxer
    # writes a counter-clockwise turn: b = -sin, c = sin (it wrote 0, -1, 0, 1, 0, ... for 90).
    values = [cos, -sin, zero, sin, cos, zero, zero, zero, 0x40000000]
    for index, value in enumerate(values):
        data[matrix_at + 4 * index : matrix_at + 4 * index + 4] = (value & 0xFFFFFFFF).to_bytes(
            4, "big"
        )
    path.write_bytes(bytes(data))
