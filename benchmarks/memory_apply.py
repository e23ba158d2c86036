"""Peak memory of `stylize apply` (the torch path) against the estimate of `Stylizer`.

Each measurement runs in a fresh process: it builds a random default transform network and a
photo-sized tensor, notes its resident memory, stylizes the image once (whole, or in tiles of
`--tile-size`), and reports the peak resident memory above the noted level (`ru_maxrss`, CPU)
next to `Stylizer.memory_needed`, what the guard checks before it starts.

    python benchmarks/memory_apply.py                          # whole and tiled, CPU
    python benchmarks/memory_apply.py --runs 2048x1536@128,4096x3072@256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> None:
    import torch

    from stylize.engine.inference import Stylizer
    from stylize.engine.runtime import Runtime
    from stylize.engine.transformer import TransformerNet

    torch.manual_seed(0)
    runtime = Runtime.create(args.device, args.precision)
    stylizer = Stylizer(TransformerNet(), runtime, tile_size=args.tile_size)
    image = torch.rand(1, 3, args.height, args.width)
    estimate = stylizer.memory_needed(image.shape, tile_size=args.tile_size)
    before = _resident()
    stylizer(image, preserve_color=args.preserve_color)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    pixels = args.width * args.height
    print(
        json.dumps(
            {
                "size": f"{args.width}x{args.height}",
                "tile_size": args.tile_size,
                "precision": runtime.precision_name,
                "peak_mb": round(peak / 2**20),
                "estimate_mb": round(estimate / 2**20),
                "peak_bytes_per_pixel": round(peak / pixels),
                "estimate_over_peak": round(estimate / peak, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="512x512@1024,1024x768@1024,1024x768@128,2048x1024@128")
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--preserve-color", action="store_true")
    args = parser.parse_args()
    if args._measure:
        measure(args)
        return
    for run in args.runs.split(","):
        size, tile = run.split("@")
        width, height = size.split("x")
        for precision in args.precisions.split(","):
            command = [
                sys.executable, __file__, "--_measure", "--device", args.device,
                "--width", width, "--height", height, "--tile-size", tile,
                "--precision", precision,
            ]  # fmt: skip
            if args.preserve_color:
                command.append("--preserve-color")
            environment = {**os.environ, "STYLIZE_MEMORY_CHECK": "0"}
            done = subprocess.run(command, env=environment, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(done.returncode)
            print(done.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
