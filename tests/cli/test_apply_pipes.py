"""`stylize apply` with pipes: `-` reads one image from standard input, `-o -` writes it to
standard output (PNG unless --format says otherwise); nothing else ever goes to stdout."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import MemoryStream

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


@pytest.fixture
def run():
    """The CLI in-process with bytes on standard input: run(*args, input=b"...")."""
    from cli_runner import run_cli

    def invoke(*args: object, input: bytes | None = None):
        return run_cli(args, input=input)

    return invoke


def image_bytes(path: Path, format: str = "PNG") -> bytes:
    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=format, quality=95)
    return buffer.getvalue()


def decoded(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, np.asarray(image.convert("RGB"), dtype=np.int16)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_standard_input_to_standard_output_is_one_png(run, tiny, make_image, tmp_path, format):
    photo = make_image("photo.png", size=(48, 32))
    expected = tmp_path / "expected.png"
    source = photo if format == "PNG" else tmp_path / "photo.jpg"
    if format == "JPEG":
        source.write_bytes(image_bytes(photo, "JPEG"))
    reference = run("apply", source, "-s", tiny, "--device", "cpu", "-o", expected)
    assert reference.exit_code == 0, reference.stderr

    result = run("apply", "-", "-s", tiny, "--device", "cpu", "-o", "-", input=source.read_bytes())
    assert result.exit_code == 0, result.stderr
    data = result.stdout_bytes
    assert data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)  # the image, nothing else
    image_format, image = decoded(data)
    assert image_format == "PNG" and image.shape == (32, 48, 3)
    assert np.array_equal(image, pixels(expected))
    assert not list(tmp_path.glob("stdin*")) and not Path("-").exists()


def test_standard_output_is_the_default_for_standard_input(run, tiny, make_image):
    result = run("apply", "-", "-s", tiny, input=make_image().read_bytes())
    assert result.exit_code == 0, result.stderr
    assert decoded(result.stdout_bytes)[0] == "PNG"


@pytest.mark.parametrize(
    ("option", "format"),
    [("jpg", "JPEG"), ("webp", "WEBP"), ("tiff", "TIFF"), ("png", "PNG")],
)
def test_format_chooses_the_encoding_on_standard_output(run, tiny, make_image, option, format):
    photo = make_image(size=(40, 36))
    result = run("apply", photo, "-s", tiny, "-o", "-", "--format", option)
    assert result.exit_code == 0, result.stderr
    image_format, image = decoded(result.stdout_bytes)
    assert image_format == format and image.shape == (36, 40, 3)


def test_format_sets_the_suffix_of_generated_names(run, tiny, make_image, tmp_path):
    photo = make_image("photo.png")
    result = run("apply", photo, "-s", tiny, "--format", "jpg")
    assert result.exit_code == 0, result.stderr
    output = photo.with_name("photo.tiny.jpg")
    assert result.stdout.splitlines() == [str(output)]
    with Image.open(output) as image:
        assert image.format == "JPEG"
    result = run("apply", photo, "-s", tiny, "--format", "webp", "-o", tmp_path / "styled/")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "styled" / "photo.tiny.webp")]


def test_standard_input_to_a_file(run, tiny, make_image, tmp_path):
    photo = make_image("photo.png")
    target = tmp_path / "out.png"
    result = run("apply", "-", "-s", tiny, "-o", target, input=photo.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(target)]
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (48, 32)


def test_standard_input_to_a_folder_is_named_after_stdin(run, tiny, make_image, tmp_path):
    photo = make_image("photo.png")
    folder = tmp_path / "styled"
    folder.mkdir()
    result = run(
        "apply", "-", "-s", tiny, "-o", folder, "--format", "jpg", input=photo.read_bytes()
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(folder / "stdin.tiny.jpg")]
    assert (folder / "stdin.tiny.jpg").is_file()


def test_standard_input_must_be_the_only_input(run, tiny, make_image, tmp_path):
    photo = make_image("photo.png")
    result = run("apply", "-", photo, "-s", tiny, "-o", tmp_path / "out", input=photo.read_bytes())
    assert result.exit_code == 2
    assert "must be the only input" in result.stderr
    assert result.stdout_bytes == b""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photo.png"]


def test_standard_output_takes_one_image(run, tiny, make_image, tmp_path):
    first, second = make_image("a.png"), make_image("b.png", seed=1)
    for inputs in ((first, second), (tmp_path,)):
        result = run("apply", *inputs, "-s", tiny, "-o", "-")
        assert result.exit_code == 2, result.stderr
        assert "standard output takes one image" in result.stderr
        assert result.stdout_bytes == b""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_empty_standard_input_is_a_one_line_error(run, tiny):
    result = run("apply", "-", "-s", tiny, "-o", "-", input=b"")
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "standard input" in lines[0] and "empty" in lines[0]


def test_standard_input_that_is_no_image_is_a_one_line_error(run, tiny):
    result = run("apply", "-", "-s", tiny, "-o", "-", input=b"certainly not an image")
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "standard input" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_terminal_is_refused_as_standard_output(run, tiny, make_image, monkeypatch):
    monkeypatch.setattr(MemoryStream, "isatty", lambda self: True)
    result = run("apply", make_image(), "-s", tiny, "-o", "-")
    assert result.exit_code == 2
    assert "refusing to write an image to the terminal" in result.stderr
    assert result.stdout_bytes == b""
    result = run("apply", "-", "-s", tiny, input=make_image().read_bytes())
    assert result.exit_code == 2
    assert "terminal" in result.stderr


def test_pipes_in_a_real_process(tiny, make_image, stylize_home, tmp_path):
    """Binary standard input and output of a real process; messages only on stderr."""
    photo = make_image("photo.png", size=(44, 36))
    environment = {**os.environ, "STYLIZE_HOME": str(stylize_home)}
    environment.pop("STYLIZE_ONNX", None)
    with open(photo, "rb") as stdin:
        completed = subprocess.run(
            [sys.executable, "-m", "stylize", "apply", "-", "-s", tiny, "--device", "cpu"],
            stdin=stdin,
            capture_output=True,
            env=environment,
            timeout=300,
        )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(PNG_SIGNATURE) and completed.stdout.endswith(PNG_END)
    assert decoded(completed.stdout)[1].shape == (36, 44, 3)

    completed = subprocess.run(
        [sys.executable, "-m", "stylize", "apply", "-", "-s", "nothing", "-o", "-"],
        input=photo.read_bytes(),
        capture_output=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 1
    assert completed.stdout == b""
    assert b"no style named 'nothing'" in completed.stderr


def test_an_existing_file_needs_overwrite_when_reading_standard_input(
    run, tiny, make_image, tmp_path
):
    photo = make_image("photo.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    result = run("apply", "-", "-s", tiny, "-o", target, input=photo.read_bytes())
    assert result.exit_code == 1
    assert "exists" in result.stderr and target.read_bytes() == b"keep me"
    result = run("apply", "-", "-s", tiny, "-o", target, "--overwrite", input=photo.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert pixels(target).shape == (32, 48, 3)


def test_a_terminal_is_refused_as_standard_input(run, tiny, monkeypatch, tmp_path):
    # The test runner's standard streams, standard input among them, say they are terminals.
    monkeypatch.setattr(MemoryStream, "isatty", lambda self: True)
    result = run("apply", "-", "-s", tiny, "-o", tmp_path / "out.png")
    assert result.exit_code == 2
    assert "standard input" in result.stderr and "terminal" in result.stderr
