"""Temporal stability of video stylization: flicker, faithfulness and speed, by temporal weight.

Two clips are made from a real photo with known motion at 640x360 (a camera pan of 3 pixels
right and 1 down per frame, and a zoom of 1% per frame into the centre), written as H.264 with
stylize's own writer and read back (so the frames carry real compression noise, one cause of
flicker). Each frame is stylized alone with the 26-style network (style 19, the real weights in
tests/data/weights) through the engine's `Stylizer`, then `TemporalStabilizer` runs over the
sequence for each temporal weight (0 is frame by frame) and each DIS preset.

Reported per clip and setting:
- warping error (Lai et al., ECCV 2018): mean squared difference, colors in [0, 1], between each
  output frame and the previous output frame warped by the TRUE motion, over the pixels that
  motion keeps inside the frame; and its ratio to frame by frame (target: at most 0.5);
- mean absolute difference to the frame stylized alone, in 8-bit levels (the style must not
  wash out);
- detail kept: the output's mean absolute Laplacian over the per-frame stylization's (below 1:
  blurred by the repeated warps);
- valid: the share of pixels the forward-backward check kept;
- ms per frame of the stabilizer (two DIS flows, the check, the warp and the blend), and the
  whole pipeline's frames per second (decode + stylize + stabilize + encode) with and without.

    python benchmarks/bench_video.py           # 48 frames a clip (about 2 min on 2 cores)
    python benchmarks/bench_video.py --quick   # 8 frames at 160x90: checks that it works
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from stylize.engine.inference import Stylizer
from stylize.engine.multistyle import load_multistyle
from stylize.engine.runtime import Runtime
from stylize.engine.temporal import PRESETS, TemporalStabilizer, inside, warping_error
from stylize.engine.video import open_video, write_video
from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "tests" / "data" / "weights" / "stylize_quantized.pb"
PHOTOS = (ROOT.parent / "shared" / "images" / "content" / "tubingen.jpg",)
FALLBACK_PHOTO = ROOT / "docs" / "gallery" / "inputs" / "shipwreck.jpg"
STYLE = 19
WEIGHTS_TO_TRY = (0.0, 0.3, 0.5, 0.7, 0.85)
PAN_STEP = (3, 1)
ZOOM = 1.01


def load_photo() -> np.ndarray:
    path = next((photo for photo in PHOTOS if photo.exists()), FALLBACK_PHOTO)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pan_clip(scene: np.ndarray, count: int, width: int, height: int) -> list[np.ndarray]:
    dx, dy = PAN_STEP
    needed = (width + dx * count, height + dy * count)
    scale = max(needed[0] / scene.shape[1], needed[1] / scene.shape[0], 1.0)
    if scale > 1.0:
        size = (round(scene.shape[1] * scale) + 1, round(scene.shape[0] * scale) + 1)
        scene = cv2.resize(scene, size, interpolation=cv2.INTER_CUBIC)
    return [
        np.ascontiguousarray(scene[dy * t : dy * t + height, dx * t : dx * t + width])
        for t in range(count)
    ]


def zoom_clip(scene: np.ndarray, count: int, width: int, height: int) -> list[np.ndarray]:
    """Frame t at p shows the scene at c + (p - c) / (s0 * ZOOM**t)."""
    centre = ((scene.shape[1] - 1) / 2, (scene.shape[0] - 1) / 2)
    out = ((width - 1) / 2, (height - 1) / 2)
    start = max(width / scene.shape[1], height / scene.shape[0]) * 1.05
    frames = []
    for t in range(count):
        scale = start * ZOOM**t
        matrix = np.array(
            [[scale, 0, out[0] - scale * centre[0]], [0, scale, out[1] - scale * centre[1]]]
        )
        frames.append(cv2.warpAffine(scene, matrix, (width, height), flags=cv2.INTER_AREA))
    return frames


def true_flow(kind: str, width: int, height: int) -> np.ndarray:
    """The backward flow (current -> previous) of every frame pair of the clip."""
    flow = np.empty((height, width, 2), np.float32)
    if kind == "pan":
        flow[..., 0], flow[..., 1] = PAN_STEP
        return flow
    rows, columns = np.indices((height, width), dtype=np.float32)
    flow[..., 0] = (columns - (width - 1) / 2) * (1 / ZOOM - 1)
    flow[..., 1] = (rows - (height - 1) / 2) * (1 / ZOOM - 1)
    return flow


def through_h264(
    frames: list[np.ndarray], folder: Path, name: str
) -> tuple[list[np.ndarray], float]:
    """The frames after an H.264 round trip with stylize's writer and reader, and the seconds
    per frame that decoding and encoding took."""
    raw = folder / f"{name}-raw.mp4"
    import av

    with av.open(str(raw), "w") as output:
        stream = output.add_stream("libx264", rate=30, options={"crf": "20"})
        stream.width, stream.height, stream.pix_fmt = (
            frames[0].shape[1],
            frames[0].shape[0],
            "yuv420p",
        )
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    started = time.perf_counter()
    copy = folder / f"{name}.mp4"
    with open_video(raw) as reader, write_video(copy, reader.info) as writer:
        decoded = []
        for frame in reader.frames():
            decoded.append(frame.image)
            writer.write(frame.image, frame.pts)
    return decoded, (time.perf_counter() - started) / len(frames)


def stylize_all(stylizer: Stylizer, frames: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    for _ in range(2):  # warm-up: the first calls pick kernels
        stylizer(torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255)
    started = time.perf_counter()
    out = []
    for frame in frames:
        tensor = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        result = stylizer(tensor)[0].permute(1, 2, 0).numpy()
        out.append(np.clip(np.rint(result * 255), 0, 255).astype(np.uint8))
    return out, (time.perf_counter() - started) / len(frames)


def evaluate(
    inputs: list[np.ndarray],
    stylized: list[np.ndarray],
    flow: np.ndarray,
    make: Callable[[], TemporalStabilizer],
) -> dict[str, float]:
    stabilizer = make()
    outputs, valid_shares = [], []
    started = time.perf_counter()
    for frame, styled in zip(inputs, stylized, strict=True):
        outputs.append(stabilizer(frame, styled))
        if stabilizer.valid_fraction is not None:
            valid_shares.append(stabilizer.valid_fraction)
    seconds = (time.perf_counter() - started) / len(inputs)
    mask = inside(flow, flow.shape[1], flow.shape[0])
    error = np.mean([warping_error(a, b, flow, mask) for a, b in itertools.pairwise(outputs)])
    difference = np.mean(
        [np.abs(a.astype(np.float32) - b).mean() for a, b in zip(outputs, stylized, strict=True)]
    )
    detail = np.mean([_detail(a) for a in outputs]) / np.mean([_detail(b) for b in stylized])
    return {
        "error": float(error),
        "detail": float(detail),
        "difference": float(difference),
        "valid": float(np.mean(valid_shares)) if valid_shares else 1.0,
        "seconds": seconds,
    }


def _detail(frame: np.ndarray) -> float:
    """Mean absolute Laplacian: the fine texture a blurred, washed-out frame loses."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(gray, cv2.CV_32F)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 frames at 160x90")
    parser.add_argument("--frames", type=int, default=48)
    options = parser.parse_args()
    count, (width, height) = (8, (160, 90)) if options.quick else (options.frames, (640, 360))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runtime = Runtime.create("cpu", "auto")
    weights = torch.zeros(26)
    weights[STYLE] = 1.0
    stylizer = Stylizer(load_multistyle(read_multistyle_graphdef(WEIGHTS)).bind(weights), runtime)
    scene = load_photo()
    clips = {
        "pan": pan_clip(scene, count, width, height),
        "zoom": zoom_clip(scene, count, width, height),
    }
    print(
        f"{count} frames at {width}x{height}, 26-style network style {STYLE}, "
        f"precision {runtime.compute_dtype}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, frames in clips.items():
            decoded, io_seconds = through_h264(frames, Path(folder), name)
            stylized, style_seconds = stylize_all(stylizer, decoded)
            flow = true_flow(name, width, height)
            baseline = None
            for preset in PRESETS:
                for weight in WEIGHTS_TO_TRY:
                    if weight == 0 and preset != PRESETS[0]:
                        continue
                    result = evaluate(
                        decoded,
                        stylized,
                        flow,
                        lambda w=weight, p=preset: TemporalStabilizer(w, preset=p),
                    )
                    if baseline is None:
                        baseline = result["error"]
                    per_frame = io_seconds + style_seconds + result["seconds"]
                    rows.append(
                        (
                            name,
                            "-" if weight == 0 else preset,
                            weight,
                            result["error"],
                            result["error"] / baseline,
                            result["difference"],
                            result["detail"],
                            result["valid"],
                            1000 * result["seconds"],
                            1 / per_frame,
                        )
                    )
            print(
                f"{name}: stylize {1000 * style_seconds:.0f} ms/frame, decode+encode "
                f"{1000 * io_seconds:.0f} ms/frame, frame by frame "
                f"{1 / (io_seconds + style_seconds):.2f} fps",
                file=sys.stderr,
            )
    print(
        "| clip | DIS preset | weight | warping error | vs frame by frame | mean abs diff to "
        "per-frame (8-bit) | detail kept | valid | stabilizer ms/frame | pipeline fps |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, preset, weight, error, ratio, difference, detail, valid, ms, fps in rows:
        print(
            f"| {name} | {preset} | {weight:g} | {error:.5f} | {ratio:.2f} | {difference:.2f} | "
            f"{detail:.2f} | {valid:.3f} | {ms:.1f} | {fps:.2f} |"
        )


if __name__ == "__main__":
    main()
