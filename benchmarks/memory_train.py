"""Peak memory of `stylize train` steps against the estimate of `stylize.engine.memory`.

Each measurement runs in a fresh process: it prepares the training job (style image read, data
folder scanned), notes its resident memory, then loads the VGG19 weights and trains a few steps,
and reports the peak resident memory above the noted level (`ru_maxrss`, CPU) or the peak of
the caching allocator (`torch.cuda.max_memory_allocated`, CUDA). That increase is what the
memory guard estimates in `prepare_training`. The weights are random (no download needed).

    python benchmarks/memory_train.py                      # 128 and 256 px, batches 1 to 4
    python benchmarks/memory_train.py --quick              # one tiny run, checks that it works
    python benchmarks/memory_train.py --runs 256x8,512x4 --architectures default,tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from memory_optimize import install_vgg

ARCHITECTURES = {"default": ((32, 64, 128), 5), "tiny": ((8, 16, 16), 1)}


def make_images(folder: Path, count: int = 8) -> tuple[Path, Path]:
    """A folder of noisy photo-like images (larger than any crop) and a stripy style image."""
    rng = np.random.default_rng(0)
    photos = folder / "photos"
    photos.mkdir()
    y, x = np.mgrid[0:600, 0:800] / 600
    for number in range(count):
        pixels = np.stack([x, y, (x + y) / 2], axis=-1) * 170 + rng.normal(0, 12, (600, 800, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(photos / f"{number}.png")
    y, x = np.mgrid[0:800, 0:800] / 800
    style = np.sin(40 * x + 15 * y)[..., None] * [90, 60, 30] + 128
    style = style + rng.normal(0, 25, style.shape)
    path = folder / "style.png"
    Image.fromarray(np.clip(style, 0, 255).astype(np.uint8)).save(path)
    return photos, path


def _resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> None:
    """One run in this process; prints a JSON line."""
    import torch

    from stylize.engine import memory
    from stylize.engine.runtime import Runtime
    from stylize.engine.settings import TrainSettings, TransformerConfig
    from stylize.engine.training import prepare_training, run_training
    from stylize.store.registry import load_vgg19_weights

    channels, blocks = ARCHITECTURES[args.architecture]
    settings = TrainSettings(
        image_size=args.image_size,
        batch_size=args.batch_size,
        style_size=args.style_size,
        architecture=TransformerConfig(channels=channels, residual_blocks=blocks),
    )
    plan = prepare_training(
        style_image=Path(args.style),
        data_folder=Path(args.data),
        workdir=Path(args.workdir),
        settings=settings,
        runtime=Runtime.create(args.device, args.precision),
        steps=args.steps,
    )
    estimate = memory.train_estimate(
        settings.image_size,
        settings.batch_size,
        plan.style.size,
        config=settings.architecture,
        content_layers=settings.content_layers,
        style_layers=settings.style_layers,
        reduced_precision=plan.runtime.dtype is not None,
    )
    before = _resident()
    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    run_training(plan, load_vgg19_weights(), checkpoint_every=10**6, preview_every=10**6)
    if plan.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    pixels = settings.batch_size * settings.image_size**2
    print(
        json.dumps(
            {
                "run": f"{args.image_size}x{args.batch_size}",
                "architecture": args.architecture,
                "precision": plan.runtime.precision_name,
                "pixels": pixels,
                "peak_mb": round(peak / 2**20),
                "estimate_mb": round(estimate.total / 2**20),
                "peak_bytes_per_pixel": round(peak / pixels),
                "estimate_over_peak": round(estimate.total / peak, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="128x1,128x4,256x1,256x2,256x4", help="SIZExBATCH,...")
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--architectures", default="default,tiny")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--style-size", type=int, default=256)
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--architecture", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--style", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        measure(args)
        return
    if args.quick:
        args.runs, args.precisions, args.architectures, args.steps = "64x1", "fp32", "tiny", 1
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        install_vgg(home)
        photos, style = make_images(home)
        number = 0
        for run in args.runs.split(","):
            size, batch = run.split("x")
            for architecture in args.architectures.split(","):
                for precision in args.precisions.split(","):
                    number += 1
                    command = [
                        sys.executable, __file__, "--_measure", "--device", args.device,
                        "--image-size", size, "--batch-size", batch, "--precision", precision,
                        "--architecture", architecture, "--steps", str(args.steps),
                        "--style-size", str(args.style_size), "--data", str(photos),
                        "--style", str(style), "--workdir", str(home / f"work{number}"),
                    ]  # fmt: skip
                    # The guard would refuse what this sets out to measure.
                    environment = {**os.environ, "STYLIZE_HOME": str(home)}
                    environment["STYLIZE_MEMORY_CHECK"] = "0"
                    run_ = subprocess.run(command, env=environment, capture_output=True, text=True)
                    if run_.returncode != 0:
                        print(run_.stderr, file=sys.stderr)
                        raise SystemExit(run_.returncode)
                    print(run_.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
