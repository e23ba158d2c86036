import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def images(make_image) -> tuple[Path, Path, Path]:
    """A 48x32 content photo and two 40x40 style images with different colors."""
    content = make_image("content.png", size=(48, 32), seed=1)
    warm = make_image("warm.png", size=(40, 40), seed=2)
    with Image.open(warm) as image:
        red, green, _ = image.split()
        Image.merge("RGB", (red, green, Image.new("L", image.size))).save(warm)
    cool = make_image("cool.png", size=(40, 40), seed=3)
    with Image.open(cool) as image:
        image.transpose(Image.Transpose.ROTATE_90).save(cool)
    return content, warm, cool


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def chroma(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        ycbcr = image.convert("RGB").resize(size, Image.Resampling.LANCZOS).convert("YCbCr")
        return np.asarray(ycbcr, dtype=np.float64)[..., 1:]


def test_optimize_coarse_to_fine_with_trace_and_snapshots(cli, vgg_home, images, tmp_path):
    content, warm, _ = images
    out = tmp_path / "result.png"
    trace = tmp_path / "trace.jsonl"
    args = ["--size", 64, "--scales", 2, "--iterations", 9, "--trace", trace, "--save-every", 4]
    result = cli("optimize", content, warm, "-o", out, *args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.size == (64, 43)
    records = read_trace(trace)
    assert [record["iteration"] for record in records] == list(range(1, 10))
    assert [record["scale"] for record in records] == [1] * 6 + [2] * 3
    assert {"content", "style", "tv", "total", "elapsed"} <= set(records[0])
    first_scale = [record["total"] for record in records if record["scale"] == 1]
    assert first_scale[-1] < first_scale[0]
    elapsed = [record["elapsed"] for record in records]
    assert elapsed == sorted(elapsed)
    snapshots = sorted(path.name for path in tmp_path.glob("result.*.png"))
    assert snapshots == ["result.0004.png", "result.0008.png"]
    with Image.open(tmp_path / "result.0004.png") as image:
        assert image.size == (32, 21)


def test_preserve_color_keeps_the_content_chroma(cli, vgg_home, images, tmp_path):
    content, warm, _ = images
    common = ["--size", 32, "--iterations", 6, "-q"]
    kept, changed = tmp_path / "kept.png", tmp_path / "changed.png"
    assert cli("optimize", content, warm, "-o", kept, "--preserve-color", *common).exit_code == 0
    assert cli("optimize", content, warm, "-o", changed, *common).exit_code == 0
    target = chroma(content, (32, 21))
    kept_error = np.abs(chroma(kept, (32, 21)) - target).mean()
    changed_error = np.abs(chroma(changed, (32, 21)) - target).mean()
    assert kept_error < 1  # in 8-bit levels: rounding and clamping only
    assert changed_error > 5


def test_blend_weights_change_the_result(cli, vgg_home, images, tmp_path):
    content, warm, cool = images
    outputs = {}
    for blend in ("0.9,0.1", "0.1,0.9"):
        out = tmp_path / f"blend-{blend}.png"
        result = cli("optimize", content, warm, cool, "-o", out, "--style-blend", blend,
                     "--size", 32, "--iterations", 5, "--precision", "fp32", "-q")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        outputs[blend] = np.asarray(Image.open(out), dtype=np.float64)
    assert np.abs(outputs["0.9,0.1"] - outputs["0.1,0.9"]).mean() > 1


def test_existing_output_is_kept_unless_overwrite(cli, vgg_home, images, tmp_path):
    content, warm, _ = images
    out = tmp_path / "result.png"
    out.write_bytes(b"precious")
    args = ["optimize", content, warm, "-o", out, "--size", 32, "--iterations", 2, "-q"]
    result = cli(*args)
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert out.read_bytes() == b"precious"
    assert cli(*args, "--overwrite").exit_code == 0
    with Image.open(out) as image:
        assert image.size == (32, 21)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"content": "missing.png"}, 1, "image not found"),
        ({"style": "not-an-image.png"}, 1, "cannot read"),
        ({"-o": "no-such-folder/out.png"}, 1, "does not exist"),
        ({"-o": "out.gif"}, 1, "unsupported image type"),
        ({"-o": "-"}, 2, "writing images to standard output is not supported"),
        ({"--style-blend": "0.5,0.3,0.2"}, 2, "3 weight(s) for 1 style"),
        ({"--style-blend": "-1"}, 2, "non-negative numbers, not all zero"),
        ({"--style-blend": "nan"}, 2, "non-negative numbers, not all zero"),
        ({"--style-blend": "a,b"}, 2, "not a comma-separated list of numbers"),
        ({"--style-layers": "relu1_1,relu9_1"}, 2, "unknown VGG19 layer 'relu9_1'"),
        ({"--size": "0"}, 2, "--size"),
        ({"--size": "8"}, 1, "too small"),
        ({"--init": "nowhere.png"}, 2, "neither content, noise, style nor an image file"),
        ({"--lr": "0.1"}, 2, "only --optimizer adam"),
        ({"--device": "tpu"}, 2, "unknown device 'tpu'"),
        ({"--iterations": "1", "--scales": "2"}, 2, "1 iterations cannot cover 2 scales"),
        ({"--style-scale": "0"}, 2, "'--style-scale': must be a positive number"),
        ({"--optimizer": "adam", "--lr": "-1"}, 2, "'--lr': must be a positive number"),
        ({"--optimizer": "adam", "--lr": "inf"}, 2, "'--lr': must be a positive number"),
        ({"--content-weight": "-1"}, 2, "'--content-weight': must be 0 or a positive number"),
        ({"--tv-weight": "nan"}, 2, "'--tv-weight': must be 0 or a positive number"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(
    cli, images, tmp_path, monkeypatch, change, code, message
):
    # No VGG19 is installed and every download fails at once: reaching the model would show.
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", "http://127.0.0.1:9")
    content, warm, _ = images
    (tmp_path / "not-an-image.png").write_text("hello")
    options = {"-o": "out.png", "--size": "32", **change}
    positional = [change.get("content", content), change.get("style", warm)]
    named = [str(item) for key, value in options.items() if key.startswith("-")
             for item in (key, value)]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    result = cli("optimize", *positional, *named)
    assert result.exit_code == code, result.stderr
    assert message in " ".join(result.stderr.replace("│", " ").split())  # unwrap Rich's box
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_ctrl_c_saves_the_image_so_far(vgg_home, images, tmp_path):
    content, warm, _ = images
    out, trace = tmp_path / "result.png", tmp_path / "trace.jsonl"
    command = [sys.executable, "-m", "stylize", "optimize", content, warm, "-o", out, "-q",
               "--size", 48, "--scales", 2, "--iterations", 100000, "--trace", trace]  # fmt: skip
    process = subprocess.Popen(
        [str(part) for part in command],
        env={**os.environ, "STYLIZE_HOME": str(vgg_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (trace.exists() and len(trace.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no iterations traced within 60 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stdout.strip() == str(out)
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    with Image.open(out) as image:
        image.load()
        assert image.size == (48, 32)  # the coarse scale's image, brought to the output size


@pytest.mark.parametrize(
    ("arguments", "option", "message"),
    [
        (["-o", "{out}", "--trace", "{out}"], "--trace", "is also the output"),
        (["-o", "{out}", "--trace", "{dir}/y.0002.png", "--save-every", "2"], "--trace",
         "is also a --save-every snapshot"),
        (["-o", "{out}", "--trace", "{content}", "--overwrite"], "--trace", "is an input"),
        (["-o", "{content}", "--overwrite"], "--output", "is an input"),
        (["-o", "{style}", "--overwrite"], "--output", "is an input"),
        (["-o", "{dir}/../o2/./init.png", "--init", "{dir}/init.png", "--overwrite"], "--output",
         "is an input"),
        (["-o", "{dir}/c.png", "--save-every", "2", "--overwrite"], "--save-every",
         "would replace the input"),
    ],
)  # fmt: skip
def test_outputs_never_replace_inputs_or_each_other(
    cli, images, tmp_path, monkeypatch, arguments, option, message
):
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", "http://127.0.0.1:9")  # no work may start
    content, warm, _ = images
    folder = tmp_path / "o2"
    folder.mkdir()
    init = folder / "init.png"
    init.write_bytes(warm.read_bytes())
    # A content photo whose name is a snapshot name of the output o2/c.png.
    (folder / "c.0004.png").write_bytes(content.read_bytes())
    inputs = {path: path.read_bytes() for path in (content, warm, init, folder / "c.0004.png")}
    values = {"out": folder / "y.png", "dir": folder, "content": content, "style": warm}
    options = [item.format(**values) for item in arguments]
    photo = folder / "c.0004.png" if option == "--save-every" else content
    result = cli("optimize", photo, warm, "--size", 32, "--iterations", 4, *options)
    assert result.exit_code == 2, result.stderr
    unwrapped = " ".join(result.stderr.replace("│", " ").split())
    assert f"'{option}'" in unwrapped and message in unwrapped
    assert not (folder / "y.png").exists()
    assert {path: path.read_bytes() for path in inputs} == inputs


# -- memory ---------------------------------------------------------------------------------------

ALLOCATOR_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 14231732224 bytes. Error code 12 (Cannot allocate memory)"
)


def unwrapped(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_a_run_too_large_for_memory_is_refused_before_any_work(cli, images, tmp_path, monkeypatch):
    from stylize.engine import memory

    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", "http://127.0.0.1:9")  # no work may start
    monkeypatch.delenv("STYLIZE_MEMORY_CHECK", raising=False)
    available = memory.Available(int(9.1e9), "available on this machine")
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    content, warm, _ = images
    out = tmp_path / "out.png"
    result = cli("optimize", content, warm, "-o", out, "--size", 4000, "--scales", 1, "-q")
    assert result.exit_code == 1, result.stderr
    message = unwrapped(result.stderr)
    assert re.fullmatch(
        r"error: optimize at 4000x2667 needs about \d+\.\d GB of memory, but 9\.1 GB is "
        r"available on this machine: use --size \d+ or smaller",
        message,
    ), message
    assert not out.exists()


def test_running_out_of_memory_names_the_size(cli, vgg_home, images, tmp_path, monkeypatch):
    from stylize.engine import gatys

    class FailingAllocation(gatys.VGGFeatures):
        def forward(self, image):
            if image.requires_grad:
                raise RuntimeError(ALLOCATOR_FAILURE)
            return super().forward(image)

    monkeypatch.setattr(gatys, "VGGFeatures", FailingAllocation)
    content, warm, _ = images
    out = tmp_path / "out.png"
    result = cli("optimize", content, warm, "-o", out, "--size", 48, "--iterations", 3, "-q")
    assert result.exit_code == 1, result.stderr
    assert unwrapped(result.stderr) == (
        "error: ran out of memory at 48x32 on cpu: an allocation of 14.2 GB failed; use a smaller "
        "--size, or --optimizer adam"
    )
    assert not out.exists()


def test_an_empty_memory_error_anywhere_says_out_of_memory(cli, images, tmp_path, monkeypatch):
    from stylize.engine import imageio

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(imageio, "load_image", no_memory)
    content, warm, _ = images
    result = cli("optimize", content, warm, "-o", tmp_path / "out.png", "--size", 48)
    assert result.exit_code == 1
    assert unwrapped(result.stderr) == (
        "error: out of memory: an allocation failed; use a smaller size or close other programs "
        "(for details, run again as 'stylize --debug COMMAND ...')"
    )


# -- Ctrl-C ---------------------------------------------------------------------------------------

# `python -m stylize`, with two slow moments that tests ask for by setting an environment
# variable to the path of a file that says when the moment has come: SAVE_STARTED, the atomic
# write of the image (written, then a second before the rename); EXIT_STARTED, an atexit
# callback (a second, while Python shuts down).
SLOWED = """
import atexit, contextlib, os, runpy, sys, time
from pathlib import Path
import stylize.engine.imageio as imageio

if "SAVE_STARTED" in os.environ:
    original = imageio.atomic_write

    @contextlib.contextmanager
    def slow_atomic_write(path, *args, **kwargs):
        with original(path, *args, **kwargs) as file:
            yield file
            file.flush()
            Path(os.environ["SAVE_STARTED"]).write_text(str(path))
            time.sleep(1)

    imageio.atomic_write = slow_atomic_write

if "EXIT_STARTED" in os.environ:
    @atexit.register
    def slow_exit():
        Path(os.environ["EXIT_STARTED"]).write_text("exiting")
        time.sleep(1)

sys.argv[0] = "stylize"
runpy.run_module("stylize", run_name="__main__", alter_sys=True)
"""


def start_optimize(vgg_home: Path, images, folder: Path, *, slow: str | None = None):
    """`stylize optimize` in a subprocess, returned once it has traced three iterations; `slow`
    ("SAVE_STARTED" or "EXIT_STARTED", see SLOWED) names the moment to slow down, whose marker
    file is folder / slow."""
    content, warm, _ = images
    out, trace = folder / "result.png", folder / "trace.jsonl"
    entry = ["-c", SLOWED] if slow else ["-m", "stylize"]
    command = [sys.executable, *entry, "optimize", content, warm, "-o", out, "-q",
               "--size", 48, "--scales", 2, "--iterations", 100000, "--trace", trace]  # fmt: skip
    environment = {**os.environ, "STYLIZE_HOME": str(vgg_home)}
    if slow:
        environment[slow] = str(folder / slow)
    process = subprocess.Popen(
        [str(part) for part in command],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (trace.exists() and len(trace.read_text().splitlines()) >= 3):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no iterations traced within 60 s: {process.communicate()}")
        time.sleep(0.1)
    return process, out


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    return stdout, stderr


def assert_complete(out: Path) -> None:
    with Image.open(out) as image:
        image.load()  # a truncated file fails here
        assert image.size == (48, 32)


def test_a_second_ctrl_c_right_after_the_first_still_saves(vgg_home, images, tmp_path):
    process, out = start_optimize(vgg_home, images, tmp_path)
    process.send_signal(signal.SIGINT)
    time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stdout, _ = finish(process)
    assert stdout.strip() == str(out)
    assert_complete(out)


def test_a_second_ctrl_c_during_the_save_waits_for_it(vgg_home, images, tmp_path):
    process, out = start_optimize(vgg_home, images, tmp_path, slow="SAVE_STARTED")
    process.send_signal(signal.SIGINT)
    wait_for(tmp_path / "SAVE_STARTED", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert "press Ctrl-C again to quit without it" in stderr
    assert stdout.strip() == str(out)
    assert_complete(out)


def test_a_third_ctrl_c_quits_without_the_image_and_leaves_nothing(vgg_home, images, tmp_path):
    process, out = start_optimize(vgg_home, images, tmp_path, slow="SAVE_STARTED")
    process.send_signal(signal.SIGINT)
    wait_for(tmp_path / "SAVE_STARTED", process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert "the image was not saved" in stderr
    assert stdout == ""
    assert not out.exists()
    assert not list(tmp_path.glob(".result.png*"))  # no temporary left


def test_a_second_ctrl_c_while_python_shuts_down_is_ignored(vgg_home, images, tmp_path):
    process, out = start_optimize(vgg_home, images, tmp_path, slow="EXIT_STARTED")
    process.send_signal(signal.SIGINT)
    wait_for(tmp_path / "EXIT_STARTED", process)
    process.send_signal(signal.SIGINT)
    stdout, _ = finish(process)  # no "Exception ignored in atexit callback"
    assert stdout.strip() == str(out)
    assert_complete(out)


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path.name} did not come: {process.communicate()}")
        time.sleep(0.01)
