import json
import os
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
        ({"--device": "tpu"}, 1, "unknown device 'tpu'"),
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
