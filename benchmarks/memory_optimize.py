"""Peak memory of `stylize optimize` against the estimate of `stylize.engine.memory`.

Each measurement runs in a fresh process: it loads the images, notes its resident memory, then
builds the transfer, loads the VGG19 weights and runs a few iterations at one scale, and reports
the peak resident memory above the noted level (`ru_maxrss`, CPU) or the peak of the caching
allocator (`torch.cuda.max_memory_allocated`, CUDA). That increase is what the memory guard
estimates before it lets a run start. The weights are random (no download needed).

    python benchmarks/memory_optimize.py                 # 512, 1024 and 1536 px on the CPU
    python benchmarks/memory_optimize.py --quick         # tiny sizes, checks that it works
    python benchmarks/memory_optimize.py --device cuda --sizes 1024,2048,4096
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


def make_images(folder: Path) -> tuple[Path, Path]:
    """A 3:2 photo-like content image and a square stripy style image."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1000, 0:1500] / 1000
    content = np.stack([x, y, (x + y) / 2], axis=-1) * 170 + rng.normal(0, 12, (1000, 1500, 3))
    y, x = np.mgrid[0:800, 0:800] / 800
    style = np.sin(40 * x + 15 * y)[..., None] * [90, 60, 30] + 128
    style = style + rng.normal(0, 25, style.shape)
    paths = folder / "content.png", folder / "style.png"
    for pixels, path in zip((content, style), paths, strict=True):
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return paths


def install_vgg(home: Path) -> None:
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    from stylize.store.registry import import_model

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
    path = home / "vgg19-random.pth"
    torch.save(state, path)
    os.environ["STYLIZE_HOME"] = str(home)
    import_model(path, name="vgg19", trust=True)


def _resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> None:
    """One run in this process; prints a JSON line."""
    import torch

    from stylize.engine import memory
    from stylize.engine.gatys import GatysSettings, GatysTransfer
    from stylize.engine.imageio import load_image
    from stylize.engine.runtime import Runtime
    from stylize.store.registry import load_vgg19_weights

    runtime = Runtime.create(args.device, args.precision)
    content = load_image(Path(args.content)).rgb
    style = load_image(Path(args.style)).rgb
    settings = GatysSettings(
        size=args.size,
        scales=1,
        iterations=args.iterations,
        optimizer=args.optimizer,
        style_scale=args.style_scale,
    )
    before = _resident()
    transfer = GatysTransfer(content, [style], settings, runtime=runtime)
    estimate = memory.optimize_estimate(
        transfer.sizes[-1],
        transfer.style_sizes[-1],
        taps=(*settings.content_layers, *settings.style_layers),
        optimizer=settings.optimizer,
        reduced_precision=runtime.dtype is not None,
    )
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    transfer.run(load_vgg19_weights())
    if runtime.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        reserved = torch.cuda.max_memory_reserved()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        reserved = 0
    width, height = transfer.sizes[-1]
    print(
        json.dumps(
            {
                "size": f"{width}x{height}",
                "pixels": width * height,
                "optimizer": args.optimizer,
                "precision": runtime.precision_name,
                "style_scale": args.style_scale,
                "iterations": args.iterations,
                "peak_mb": round(peak / 2**20),
                "reserved_mb": round(reserved / 2**20),
                "estimate_mb": round(estimate.total / 2**20),
                "peak_bytes_per_pixel": round(peak / (width * height)),
                "estimate_over_peak": round(estimate.total / peak, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="512,1024,1536")
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--optimizers", default="adam")
    parser.add_argument("--style-scales", default="1")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    parser.add_argument("--style-scale", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--content", help=argparse.SUPPRESS)
    parser.add_argument("--style", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        measure(args)
        return
    if args.quick:
        args.sizes, args.iterations = "64,96", 2
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        install_vgg(home)
        content, style = make_images(home)
        for size in args.sizes.split(","):
            for precision in args.precisions.split(","):
                for optimizer in args.optimizers.split(","):
                    for style_scale in args.style_scales.split(","):
                        command = [
                            sys.executable, __file__, "--_measure", "--device", args.device,
                            "--size", size, "--precision", precision, "--optimizer", optimizer,
                            "--style-scale", style_scale, "--iterations", str(args.iterations),
                            "--content", str(content), "--style", str(style),
                        ]  # fmt: skip
                        run = subprocess.run(
                            command, env={**os.environ, "STYLIZE_HOME": str(home)},
                            capture_output=True, text=True,
                        )  # fmt: skip
                        if run.returncode != 0:
                            print(run.stderr, file=sys.stderr)
                            raise SystemExit(run.returncode)
                        print(run.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
