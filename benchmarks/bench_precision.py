"""What each precision costs and gives in `stylize optimize` on this machine's CPU.

Runs the Gatys loop at 512 px (one scale, the default layers and weights, Adam: with random
VGG19 weights, as real ones cannot be downloaded here, L-BFGS diverges within a few iterations
at every precision) in float32, bfloat16 and float16 autocast, on the same images (the
gallery's coffee cup and The Starry Night), and reports seconds per iteration (median) and the
final loss. Before the float32 Gram matrices, float16 stopped at iteration 1 with a NaN loss.

    python benchmarks/bench_precision.py           # 512 px, 10 iterations each (a few minutes)
    python benchmarks/bench_precision.py --quick   # 128 px, 3 iterations: checks that it works
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from stylize.engine.gatys import GatysSettings, GatysTransfer
from stylize.engine.runtime import Runtime

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def images() -> tuple[Image.Image, Image.Image]:
    """The gallery's coffee cup and The Starry Night (public domain, CC0)."""
    inputs = Path(__file__).resolve().parent.parent / "docs" / "gallery" / "inputs"
    content = Image.open(inputs / "coffee.jpg").convert("RGB")
    return content, Image.open(inputs / "starry-night.jpg").convert("RGB")


def timed_run(
    transfer: GatysTransfer, weights: dict[str, torch.Tensor]
) -> tuple[list[float], list[float]]:
    """When each iteration's losses were reported, and the total losses."""
    stamps: list[float] = []
    losses: list[float] = []

    def report(completed: int, total: int, **values: float) -> None:
        stamps.append(time.perf_counter())
        losses.append(values["loss"])

    transfer.run(weights, report)
    return stamps, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    size, iterations = (128, 3) if options.quick else (512, 10)
    torch.manual_seed(0)
    weights = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
    content, style = images()
    settings = GatysSettings(size=size, scales=1, iterations=iterations, optimizer="adam")
    print(f"{size} px, Adam, {iterations} iterations, torch {torch.__version__}")
    print("| precision | s/iteration | final loss |")
    print("| --- | ---: | ---: |")
    for name, dtype in PRECISIONS.items():
        transfer = GatysTransfer(
            content, [style], settings, runtime=Runtime(torch.device("cpu"), dtype)
        )
        stamps, losses = timed_run(transfer, weights)
        # The first interval includes building the targets; the rest are iterations.
        per_iteration = statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))
        print(f"| {name} | {per_iteration:.3f} | {losses[-1]:.4g} |")


if __name__ == "__main__":
    main()
