"""Start-up time of `stylize --help` and `stylize models list` against `import torch`.

Target: `stylize --help` takes less than 0.15 of the time `python -c "import torch"` takes,
because neither command may import torch. Each repetition runs every command once, in turn,
so a slow stretch of the machine affects them all alike; the table shows medians.

    python benchmarks/bench_startup.py            # 20 repetitions (about a minute)
    python benchmarks/bench_startup.py --quick    # 2 repetitions, to check that it works

Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 0.15


def stylize_command() -> list[str]:
    """The installed console script next to this Python, as users run it."""
    script = shutil.which("stylize", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "stylize"]


def run_once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions only")
    parser.add_argument("--repetitions", type=int, default=20)
    args = parser.parse_args()
    repetitions = 2 if args.quick else args.repetitions

    stylize = stylize_command()
    cases = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "stylize --help": [*stylize, "--help"],
        "stylize models list": [*stylize, "models", "list"],
    }
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "STYLIZE_HOME": home, "NO_COLOR": "1"}
        for command in cases.values():
            run_once(command, env)  # warm the file cache and bytecode before timing
        times: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(repetitions):
            for label, command in cases.items():
                times[label].append(run_once(command, env))

    reference = statistics.median(times['python -c "import torch"'])
    print(f"Python {sys.version.split()[0]}, {repetitions} repetitions, {' '.join(stylize)}")
    print(f"{'command':<28} {'median s':>9} {'min s':>8} {'vs torch':>9}")
    for label, samples in times.items():
        median = statistics.median(samples)
        print(f"{label:<28} {median:>9.3f} {min(samples):>8.3f} {median / reference:>9.3f}")
    ratio = statistics.median(times["stylize --help"]) / reference
    verdict = "met" if ratio < TARGET_RATIO else "MISSED"
    print(f"stylize --help / import torch = {ratio:.3f} (target < {TARGET_RATIO}): {verdict}")
    return 0 if ratio < TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
