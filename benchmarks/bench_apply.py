"""Whole-command wall time and peak memory of `stylize apply` on big images, against a
pytorch/examples-style eval script; the reference script and helpers bench_peer.py shares.

The reference does what `neural_style.py eval` of pytorch/examples fast_neural_style does: load
the .pth state dict with torch.load, build the network, read the image with PIL and convert it
with torchvision transforms, run it in float32 under torch.no_grad() on channels-first tensors,
and save the clamped result with PIL. Both sides get the same random weights of the default
architecture (speed does not depend on their values), the same images and the CPU, and both are
timed as whole processes, start-up and model loading included. `stylize apply` runs twice: with
its defaults (`--precision auto`: bf16 where the CPU has it) and with `--precision fp32`.

Whole-process ratios mix start-up (the reference also imports torchvision), precision (auto) and
compute: bench_peer.py separates them and judges the 1024 px speed target. This script is for
the memory of big images, which stylize runs in tiles: target, 2048 px within 4 GB.

    python benchmarks/bench_apply.py            # 1024 and 2048 px, 3 runs (about 5 min, 2 cores)
    python benchmarks/bench_apply.py --quick    # tiny sizes, one run, checks that it works
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# torch, numpy and Pillow are imported where used: bench_peer.py imports this module in
# processes that must not load torch (its onnxruntime timings).

MEMORY_LIMIT_MB = 4096

# The reference script, written the way pytorch/examples writes it (its own network definition,
# no stylize imports). REFERENCE_NETWORK is the network alone: bench_peer.py times it in-process.
REFERENCE_NETWORK = textwrap.dedent(
    """
    import torch


    class ConvLayer(torch.nn.Module):
        def __init__(self, inputs, outputs, kernel, stride=1, upsample=None):
            super().__init__()
            self.upsample = upsample
            self.reflection_pad = torch.nn.ReflectionPad2d(kernel // 2)
            self.conv2d = torch.nn.Conv2d(inputs, outputs, kernel, stride)

        def forward(self, x):
            if self.upsample:
                x = torch.nn.functional.interpolate(x, scale_factor=self.upsample, mode="nearest")
            return self.conv2d(self.reflection_pad(x))


    class ResidualBlock(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = ConvLayer(channels, channels, 3)
            self.in1 = torch.nn.InstanceNorm2d(channels, affine=True)
            self.conv2 = ConvLayer(channels, channels, 3)
            self.in2 = torch.nn.InstanceNorm2d(channels, affine=True)
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            return x + self.in2(self.conv2(self.relu(self.in1(self.conv1(x)))))


    class TransformerNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = ConvLayer(3, 32, 9)
            self.in1 = torch.nn.InstanceNorm2d(32, affine=True)
            self.conv2 = ConvLayer(32, 64, 3, 2)
            self.in2 = torch.nn.InstanceNorm2d(64, affine=True)
            self.conv3 = ConvLayer(64, 128, 3, 2)
            self.in3 = torch.nn.InstanceNorm2d(128, affine=True)
            self.res1 = ResidualBlock(128)
            self.res2 = ResidualBlock(128)
            self.res3 = ResidualBlock(128)
            self.res4 = ResidualBlock(128)
            self.res5 = ResidualBlock(128)
            self.deconv1 = ConvLayer(128, 64, 3, upsample=2)
            self.in4 = torch.nn.InstanceNorm2d(64, affine=True)
            self.deconv2 = ConvLayer(64, 32, 3, upsample=2)
            self.in5 = torch.nn.InstanceNorm2d(32, affine=True)
            self.deconv3 = ConvLayer(32, 3, 9)
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            y = self.relu(self.in1(self.conv1(x)))
            y = self.relu(self.in2(self.conv2(y)))
            y = self.relu(self.in3(self.conv3(y)))
            y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
            y = self.relu(self.in4(self.deconv1(y)))
            y = self.relu(self.in5(self.deconv2(y)))
            return self.deconv3(y)
    """
)

REFERENCE_EVAL = textwrap.dedent(
    """
    import re
    import sys

    from PIL import Image
    from torchvision import transforms

    content_path, model_path, output_path = sys.argv[1:4]
    content = Image.open(content_path).convert("RGB")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: x.mul(255))])
    content = transform(content).unsqueeze(0)
    with torch.no_grad():
        model = TransformerNet()
        state_dict = torch.load(model_path)
        for key in list(state_dict.keys()):
            if re.search(r"in\\d+\\.running_(mean|var)$", key):
                del state_dict[key]
        model.load_state_dict(state_dict)
        output = model(content).cpu()
    data = output[0].clone().clamp(0, 255).numpy().transpose(1, 2, 0).astype("uint8")
    Image.fromarray(data).save(output_path)
    """
)

REFERENCE_SCRIPT = REFERENCE_NETWORK + REFERENCE_EVAL


def stylize_command() -> list[str]:
    """The installed console script next to this Python, as users run it."""
    script = shutil.which("stylize", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "stylize"]


def make_photo(path: Path, size: int) -> Path:
    """A smooth photo-like JPEG, size x size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 255 + rng.normal(0, 12, (size, size, 3))
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def write_random_weights(path: Path) -> Path:
    """A state dict of the default pytorch/examples architecture with seeded random weights."""
    import torch

    from stylize.engine.transformer import TransformerNet

    torch.manual_seed(0)
    torch.save(TransformerNet().state_dict(), path)
    return path


# Runs a command and records its wall time, peak resident memory and exit code. The measured
# process must not be a child of the benchmark itself: on Linux a child's ru_maxrss starts at its
# parent's peak at fork, and the benchmark has loaded PyTorch. This small launcher is its parent.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as record:
    record.write(f"{seconds} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) of one process (of the largest of a process
    and the children it waited for, such as a shell loop's)."""
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "record"
        launch = [sys.executable, "-S", "-c", LAUNCHER, str(record), *command]
        done = subprocess.run(launch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode or not record.exists():
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode()}")
        seconds, peak = record.read_text().split()
    # ru_maxrss is in kilobytes on Linux and bytes on macOS.
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024
    return float(seconds), int(peak) / divisor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 and 128 px, one run each")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--runs", type=int, default=3, help="runs per size and command")
    args = parser.parse_args()
    sizes = [64, 128] if args.quick else args.sizes
    runs = 1 if args.quick else args.runs

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        env = {**os.environ, "STYLIZE_HOME": str(work / "home"), "NO_COLOR": "1"}
        weights = write_random_weights(work / "bench.pth")
        reference_script = work / "reference_eval.py"
        reference_script.write_text(REFERENCE_SCRIPT)
        stylize = stylize_command()
        subprocess.run(
            [*stylize, "models", "import", str(weights), "--name", "bench"],
            env=env,
            check=True,
            capture_output=True,
        )
        output = work / "out.png"
        apply = [*stylize, "apply", "-s", "bench", "-o", str(output), "--overwrite", "-q"]
        apply += ["--device", "cpu"]
        reference_eval = [sys.executable, str(reference_script)]

        def commands(photo: Path) -> dict[str, list[str]]:
            return {
                "reference": [*reference_eval, str(photo), str(weights), str(output)],
                "stylize": [*apply, str(photo)],
                "stylize fp32": [*apply, "--precision", "fp32", str(photo)],
            }

        results: dict[int, dict[str, tuple[float, float]]] = {}
        for size in sizes:
            photo = make_photo(work / f"photo-{size}.jpg", size)
            for command in commands(photo).values():
                timed_run(command, env)  # warm the file cache first
            samples: dict[str, list[tuple[float, float]]] = {label: [] for label in commands(photo)}
            for _ in range(runs):
                # Interleaved, so a slow stretch of the machine affects every command alike.
                for label, command in commands(photo).items():
                    samples[label].append(timed_run(command, env))
            results[size] = {
                label: (
                    statistics.median(seconds for seconds, _ in values),
                    max(memory for _, memory in values),
                )
                for label, values in samples.items()
            }

    import torch

    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, {runs} runs each")
    print("seconds: median wall time of the whole process; MB: peak resident memory")
    print("ratios: reference s / stylize s, whole process (start-up and precision included)")
    header = (
        f"{'size':>6} {'reference s':>12} {'stylize s':>10} {'ratio':>9} "
        f"{'fp32 s':>8} {'ratio':>9} {'ref MB':>8} {'stylize MB':>11} {'fp32 MB':>8}"
    )
    print(header)
    verdicts = []
    for size, row in results.items():
        reference, ours, fp32 = row["reference"], row["stylize"], row["stylize fp32"]
        print(
            f"{size:>6} {reference[0]:>12.2f} {ours[0]:>10.2f} {reference[0] / ours[0]:>8.2f}x "
            f"{fp32[0]:>8.2f} {reference[0] / fp32[0]:>8.2f}x "
            f"{reference[1]:>8.0f} {ours[1]:>11.0f} {fp32[1]:>8.0f}"
        )
        if size >= 2048:
            met = max(ours[1], fp32[1]) <= MEMORY_LIMIT_MB
            verdicts.append(
                f"{size} px: stylize within {MEMORY_LIMIT_MB} MB {'met' if met else 'MISSED'}"
            )
    for verdict in verdicts:
        print(verdict)
    return 1 if any("MISSED" in verdict for verdict in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
