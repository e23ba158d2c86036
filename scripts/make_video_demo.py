"""Makes docs/video/pan.gif: a camera pan over a real photo, stylized with the real 26-style
network frame by frame (left) and with temporal stability (right), through the real CLI.

    .venv/bin/python scripts/make_video_demo.py

Renders a 24-frame 256x144 pan (3 pixels right and 1 down a frame) over the public-domain
photo docs/gallery/inputs/coffee.jpg, encodes it as H.264 (as a camera would: the compression
noise is one cause of flicker), installs the 26-style network from tests/data/weights into a
temporary store (no download), runs `stylize apply clip.mp4 --style starry` with
`--temporal-weight 0` and with the default, and lays the two results side by side, labelled.
The GIF uses one palette for every frame and no dithering, so that what changes from frame to
frame is the stylization's own flicker, not the GIF's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "docs" / "gallery" / "inputs" / "coffee.jpg"
WEIGHTS = ROOT / "tests" / "data" / "weights" / "stylize_quantized.pb"
OUTPUT = ROOT / "docs" / "video" / "pan.gif"
STYLIZE = [sys.executable, "-m", "stylize"]
FRAMES, WIDTH, HEIGHT, FPS = 24, 256, 144, 12
STEP = (3, 1)  # pixels a frame, right and down
LABEL_HEIGHT, GAP = 18, 4
COLORS = 64  # with 256x144 panels and 24 frames: about 1.3 MB


def run(*arguments: object, env: dict[str, str]) -> None:
    print("$ stylize", " ".join(map(str, arguments)), file=sys.stderr)
    subprocess.run([*STYLIZE, *map(str, arguments)], env=env, check=True, stdout=subprocess.DEVNULL)


def pan_frames() -> list[np.ndarray]:
    """The photo scaled to leave room for the pan, viewed through a moving 320x180 window."""
    dx, dy = STEP
    margin = 16
    with Image.open(PHOTO) as image:
        scale = max(
            (HEIGHT + dy * FRAMES + 2 * margin) / image.height,
            (WIDTH + dx * FRAMES + 2 * margin) / image.width,
        )
        size = (round(image.width * scale), round(image.height * scale))
        scene = np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))
    top = (scene.shape[0] - HEIGHT - dy * FRAMES) // 2
    left = (scene.shape[1] - WIDTH - dx * FRAMES) // 2
    return [
        np.ascontiguousarray(
            scene[top + dy * t : top + dy * t + HEIGHT, left + dx * t : left + dx * t + WIDTH]
        )
        for t in range(FRAMES)
    ]


def write_clip(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=FPS, options={"crf": "23"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str]) -> Image.Image:
    canvas = Image.new("RGB", (2 * WIDTH + GAP, HEIGHT + LABEL_HEIGHT), (255, 255, 255))
    canvas.paste(Image.fromarray(left), (0, LABEL_HEIGHT))
    canvas.paste(Image.fromarray(right), (WIDTH + GAP, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for index, label in enumerate(labels):
        draw.text((index * (WIDTH + GAP) + 4, 2), label, fill=(0, 0, 0), font=font)
    return canvas


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        env = {**os.environ, "STYLIZE_HOME": str(folder / "home")}
        run("models", "import", WEIGHTS, env=env)
        clip = folder / "pan.mp4"
        write_clip(clip, pan_frames())
        run("apply", clip, "--style", "starry", "--temporal-weight", "0", "-o",
            folder / "plain.mp4", "-q", env=env)  # fmt: skip
        run("apply", clip, "--style", "starry", "-o", folder / "steady.mp4", "-q", env=env)
        plain, steady = read_clip(folder / "plain.mp4"), read_clip(folder / "steady.mp4")
    assert len(plain) == len(steady) == FRAMES
    labels = ("frame by frame (--temporal-weight 0)", "stabilized (default, 0.3)")
    pictures = [side_by_side(a, b, labels) for a, b in zip(plain, steady, strict=True)]
    # One palette for the whole clip, from a few frames, and no dithering: a pixel that does
    # not change keeps its color.
    sample = Image.new("RGB", (pictures[0].width, pictures[0].height * 3))
    for index, picture in enumerate(pictures[:: FRAMES // 3][:3]):
        sample.paste(picture, (0, index * picture.height))
    palette = sample.quantize(COLORS, method=Image.Quantize.MEDIANCUT)
    frames = [picture.quantize(palette=palette, dither=Image.Dither.NONE) for picture in pictures]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        OUTPUT,
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / FPS),
        loop=0,
        optimize=False,
    )
    print(f"{OUTPUT}: {OUTPUT.stat().st_size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
