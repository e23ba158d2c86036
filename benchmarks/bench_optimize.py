"""Seconds per iteration of `stylize optimize` against a tutorial-style Gatys implementation.

The reference is what the PyTorch neural style tutorial does: the complete VGG19 feature stack
(no truncation) with loss modules after the tapped layers, float32, channels-first tensors,
torch's L-BFGS with its defaults. Both use the same random VGG19 weights (no download needed),
the same images, layers and thread count; the timings are the median time between successive
iterations, so start-up and model loading are left out.

Our command runs in a subprocess exactly as a user runs it, with --trace for the timings:
single scale at fp32 (same work per iteration as the reference), single scale with
--precision auto (bf16 where the CPU has it), and the default coarse-to-fine schedule (its
seconds per iteration averaged over all scales, for the same iteration count).

    python benchmarks/bench_optimize.py            # 256 and 512 px (a few minutes on 2 cores)
    python benchmarks/bench_optimize.py --quick    # tiny sizes, checks that it works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import vgg19

from stylize.engine.device import pick_device, resolve_precision
from stylize.engine.imageio import load_image, to_tensor

STYLE_INDICES = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
CONTENT_INDICES = (22,)  # relu4_2


def make_images(folder: Path, size: int) -> tuple[Path, Path]:
    """A smooth photo-like content image and a stripy style image, both square."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    content = np.stack([x, y, (x + y) / 2], axis=-1) * 255 + rng.normal(0, 12, (size, size, 3))
    style = (np.sin(40 * x + 15 * y)[..., None] * [90, 60, 30] + 128) + rng.normal(
        0, 25, (size, size, 3)
    )
    paths = folder / f"content-{size}.png", folder / f"style-{size}.png"
    for pixels, path in zip((content, style), paths, strict=True):
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return paths


def random_vgg19(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = {f"features.{key}": value for key, value in vgg19().features.state_dict().items()}
    path = folder / "vgg19-random.pth"
    torch.save(state, path)
    return path, state


class _Gram(nn.Module):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = self.gram(target).detach()
        self.loss = torch.zeros(())

    @staticmethod
    def gram(x: torch.Tensor) -> torch.Tensor:
        a, b, c, d = x.size()
        features = x.view(a * b, c * d)
        return features @ features.t() / (a * b * c * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(self.gram(x), self.target)
        return x


class _Content(nn.Module):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target.detach()
        self.loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(x, self.target)
        return x


def reference_seconds_per_iteration(
    state: dict[str, torch.Tensor], content_path: Path, style_path: Path, iterations: int
) -> float:
    """The tutorial's recipe: model built layer by layer with loss modules, full depth."""
    features = vgg19().features
    features.load_state_dict({key.removeprefix("features."): value for key, value in state.items()})
    content = to_tensor(load_image(content_path).rgb)
    style = to_tensor(load_image(style_path).rgb)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)

    model = nn.Sequential()
    style_losses: list[_Gram] = []
    content_losses: list[_Content] = []
    with torch.no_grad():
        for index, layer in enumerate(features):
            model.add_module(
                str(index), nn.ReLU(inplace=False) if isinstance(layer, nn.ReLU) else layer
            )
            if index in CONTENT_INDICES:
                module = _Content(model((content - mean) / std))
                content_losses.append(module)
                model.add_module(f"content_{index}", module)
            if index in STYLE_INDICES:
                module = _Gram(model((style - mean) / std))
                style_losses.append(module)
                model.add_module(f"style_{index}", module)
    model.eval().requires_grad_(False)

    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image])
    stamps: list[float] = []

    def closure() -> torch.Tensor:
        stamps.append(time.perf_counter())
        with torch.no_grad():
            image.clamp_(0, 1)
        optimizer.zero_grad()
        model((image - mean) / std)
        loss = 1e6 * sum(m.loss for m in style_losses) + sum(m.loss for m in content_losses)
        loss.backward()
        return loss

    while len(stamps) < iterations + 2:
        optimizer.step(closure)
    return statistics.median(np.diff(stamps[1 : iterations + 2]))


def ours_seconds_per_iteration(
    content: Path, style: Path, size: int, iterations: int, *options: str
) -> tuple[float, float]:
    """(median seconds between iterations, mean seconds per iteration over the whole run)."""
    with tempfile.TemporaryDirectory() as work:
        trace = Path(work) / "trace.jsonl"
        output = Path(work) / "out.png"
        command = [sys.executable, "-m", "stylize", "optimize", content, style, "-o", output,
                   "--size", size, "--iterations", iterations + 1, "--device", "cpu",
                   "--trace", trace, "-q", *options]  # fmt: skip
        subprocess.run([str(part) for part in command], check=True, stdout=subprocess.DEVNULL)
        elapsed = [json.loads(line)["elapsed"] for line in trace.read_text().splitlines()]
    deltas = np.diff(elapsed)
    return statistics.median(deltas), float(np.mean(deltas))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check it works")
    parser.add_argument("--iterations", type=int, help="timed iterations per measurement")
    args = parser.parse_args()
    sizes = (64, 96) if args.quick else (256, 512)
    iterations = args.iterations or (2 if args.quick else 8)

    device = pick_device("cpu")  # the thread settings our command applies, for both
    reduced = resolve_precision(device, "auto")
    auto_label = str(reduced).removeprefix("torch.") if reduced else "fp32"
    print(f"CPU threads: {torch.get_num_threads()}; --precision auto here = {auto_label}")
    print(f"torch {torch.__version__}; {iterations} timed iterations per measurement\n")

    from stylize.store.registry import import_model

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder_path = Path(folder)
        weights_path, state = random_vgg19(folder_path)
        # A private store, for this process and the commands it starts.
        os.environ["STYLIZE_HOME"] = str(folder_path / "home")
        import_model(weights_path, name="vgg19", trust=True)
        for size in sizes:
            content, style = make_images(folder_path, size)
            reference = reference_seconds_per_iteration(state, content, style, iterations)
            fp32, _ = ours_seconds_per_iteration(
                content, style, size, iterations, "--scales", "1", "--precision", "fp32"
            )
            auto, _ = ours_seconds_per_iteration(
                content, style, size, iterations, "--scales", "1", "--precision", "auto"
            )
            _, coarse_to_fine = ours_seconds_per_iteration(
                content, style, size, iterations, "--precision", "fp32"
            )
            rows.append((size, reference, fp32, auto, coarse_to_fine))

    header = (
        "| size | reference s/it | ours fp32 s/it | speed-up | "
        f"ours auto ({auto_label}) s/it | speed-up | ours fp32 coarse-to-fine s/it | speed-up |"
    )
    print(header)
    print("|---" * 8 + "|")
    for size, reference, fp32, auto, coarse in rows:
        print(
            f"| {size} px | {reference:.3f} | {fp32:.3f} | {reference / fp32:.2f}x | "
            f"{auto:.3f} | {reference / auto:.2f}x | {coarse:.3f} | {reference / coarse:.2f}x |"
        )


if __name__ == "__main__":
    main()
