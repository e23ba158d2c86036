import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from style_nets import random_style_net
from stylize.engine.transformer import TransformerConfig
from stylize.store.registry import install_model, model_path

TINY = TransformerConfig(channels=(8, 16, 16), residual_blocks=1)


@pytest.fixture
def style(stylize_home: Path) -> str:
    """A random style model installed in the store as `tiny`."""
    state = random_style_net(config=TINY).state_dict()
    meta = {"kind": "style", "source": "trained", "architecture": TINY.to_dict()}
    install_model("tiny", state, meta)
    return "tiny"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def written(result) -> list[str]:
    return result.stdout.splitlines()


def test_results_are_written_beside_the_inputs_as_stem_style_ext(cli, style, make_image):
    photo = make_image("photo.png", size=(48, 32))
    snapshot = make_image("snap.jpg", size=(40, 40), seed=1)
    result = cli("apply", photo, snapshot, "--style", style, "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    outputs = [photo.with_name("photo.tiny.png"), snapshot.with_name("snap.tiny.jpg")]
    assert written(result) == [str(path) for path in outputs]
    with Image.open(outputs[0]) as first, Image.open(outputs[1]) as second:
        assert (first.format, first.size) == ("PNG", (48, 32))
        assert (second.format, second.size) == ("JPEG", (40, 40))
    assert pixels(outputs[0]).std() > 20  # a picture, not a flat or clipped one


def test_result_is_what_the_model_computes(cli, style, make_image):
    from stylize.engine.imageio import load_image, to_tensor

    photo = make_image("photo.png", size=(48, 32))
    result = cli("apply", photo, "--style", style, "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    with torch.no_grad():
        content = to_tensor(load_image(photo).rgb)
        expected = (random_style_net(config=TINY)(content * 255)[0] / 255).clamp(0, 1)
    expected_pixels = (expected * 255).round().permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(pixels(photo.with_name("photo.tiny.png")) - expected_pixels).max() <= 1


def test_output_file_for_one_input(cli, style, make_image, tmp_path):
    photo = make_image("photo.png")
    target = tmp_path / "styled.webp"
    result = cli("apply", photo, "-s", style, "-o", target)
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(target)]
    with Image.open(target) as image:
        assert image.format == "WEBP" and image.size == (48, 32)


def test_output_folder_keeps_the_layout_of_recursive_inputs(cli, style, make_image, tmp_path):
    make_image("photos/a.png")
    make_image("photos/trip/b.jpg", seed=1)
    make_image("photos/notes.gif", seed=2)
    out = tmp_path / "out"

    flat = cli("apply", tmp_path / "photos", "-s", style, "-o", out)
    assert flat.exit_code == 0, flat.stderr
    assert sorted(written(flat)) == [str(out / "a.tiny.png"), str(out / "notes.tiny.png")]

    deep = cli("apply", tmp_path / "photos", "-s", style, "-o", out, "-r", "--skip-existing")
    assert deep.exit_code == 0, deep.stderr
    assert written(deep) == [str(out / "trip" / "b.tiny.jpg")]


def test_several_inputs_need_an_output_folder(cli, style, make_image, tmp_path):
    first, second = make_image("a.png"), make_image("b.png")
    result = cli("apply", first, second, "-s", style, "-o", tmp_path / "one.png")
    assert result.exit_code == 2
    assert "give a folder" in result.stderr


def test_an_input_is_never_overwritten(cli, style, make_image):
    photo = make_image("photo.png")
    before = photo.read_bytes()
    result = cli("apply", photo, "-s", style, "-o", photo, "--overwrite")
    assert result.exit_code == 2  # a usage error, as in optimize
    assert "refusing to overwrite the input" in " ".join(result.stderr.split())
    assert photo.read_bytes() == before


def test_existing_outputs_need_overwrite_or_skip_existing(cli, style, make_image):
    photo = make_image("photo.png")
    target = photo.with_name("photo.tiny.png")
    target.write_bytes(b"an earlier result")

    refused = cli("apply", photo, "-s", style)
    assert refused.exit_code == 1
    assert "--overwrite" in refused.stderr and written(refused) == []

    skipped = cli("apply", photo, "-s", style, "--skip-existing")
    assert skipped.exit_code == 0
    assert "skipping" in skipped.stderr and written(skipped) == []
    assert target.read_bytes() == b"an earlier result"

    replaced = cli("apply", photo, "-s", style, "--overwrite")
    assert replaced.exit_code == 0
    assert written(replaced) == [str(target)]
    assert pixels(target).shape == (32, 48, 3)


def test_rerunning_on_a_folder_leaves_earlier_results_alone(cli, style, make_image, tmp_path):
    make_image("photos/a.png")
    folder = tmp_path / "photos"
    assert cli("apply", folder, "-s", style).exit_code == 0
    again = cli("apply", folder, "-s", style, "--skip-existing")
    assert again.exit_code == 0
    assert sorted(path.name for path in folder.iterdir()) == ["a.png", "a.tiny.png"]


def test_a_bad_file_among_many_is_reported_and_skipped(cli, style, make_image, tmp_path):
    make_image("photos/a.png")
    make_image("photos/c.png", seed=1)
    broken = tmp_path / "photos" / "b.png"
    broken.write_bytes(b"not really a png")
    result = cli("apply", tmp_path / "photos", "-s", style)
    assert result.exit_code == 1
    assert written(result) == [
        str(tmp_path / "photos" / "a.tiny.png"),
        str(tmp_path / "photos" / "c.tiny.png"),
    ]
    assert str(broken) in result.stderr
    assert "1 of 3 images failed" in result.stderr


def test_max_size_shrinks_and_scale_keeps_the_size(cli, style, make_image, tmp_path):
    photo = make_image("photo.png", size=(64, 48))
    small = cli("apply", photo, "-s", style, "--max-size", "32", "-o", tmp_path / "small.png")
    assert small.exit_code == 0, small.stderr
    assert Image.open(tmp_path / "small.png").size == (32, 24)

    normal = cli("apply", photo, "-s", style, "-o", tmp_path / "normal.png")
    coarse = cli("apply", photo, "-s", style, "--scale", "0.5", "-o", tmp_path / "coarse.png")
    assert normal.exit_code == 0 and coarse.exit_code == 0, coarse.stderr
    assert Image.open(tmp_path / "coarse.png").size == (64, 48)
    assert np.abs(pixels(tmp_path / "coarse.png") - pixels(tmp_path / "normal.png")).mean() > 5


def test_strength_zero_gives_back_the_original(cli, style, make_image, tmp_path):
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", style, "--strength", "0", "-o", tmp_path / "same.png")
    assert result.exit_code == 0, result.stderr
    assert np.abs(pixels(tmp_path / "same.png") - pixels(photo)).max() <= 1


def test_transparency_is_kept(cli, style, make_image):
    photo = make_image("logo.png", mode="RGBA")
    with Image.open(photo) as image:
        alpha = np.arange(48 * 32).reshape(32, 48) % 256
        image.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        image.save(photo)
    result = cli("apply", photo, "-s", style)
    assert result.exit_code == 0, result.stderr
    with Image.open(photo.with_name("logo.tiny.png")) as image:
        assert image.mode == "RGBA"
        assert np.array_equal(np.asarray(image.getchannel("A")), alpha)


def test_batches_and_tiles_do_not_change_the_result(cli, style, make_image, tmp_path):
    first = make_image("a.png", size=(100, 84))
    second = make_image("b.png", size=(100, 84), seed=1)
    options = ("-s", style, "--precision", "fp32")
    plain = cli("apply", first, second, *options, "-o", tmp_path / "plain")
    batched = cli("apply", first, second, *options, "--batch-size", "2", "-o", tmp_path / "batch")
    tiled = cli("apply", first, second, *options, "--tile-size", "64", "-o", tmp_path / "tiled")
    assert plain.exit_code == batched.exit_code == tiled.exit_code == 0
    for name in ("a.tiny.png", "b.tiny.png"):
        reference = pixels(tmp_path / "plain" / name)
        assert np.abs(pixels(tmp_path / "batch" / name) - reference).max() <= 1
        assert np.abs(pixels(tmp_path / "tiled" / name) - reference).max() <= 1


def test_style_given_as_a_pytorch_examples_file(cli, make_image, tmp_path):
    model = tmp_path / "starry.pth"
    torch.save(random_style_net(seed=4, config=TINY).state_dict(), model)
    photo = make_image("photo.png")
    result = cli("apply", photo, "--style", model)
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(photo.with_name("photo.starry.png"))]


def test_catalog_style_is_downloaded_on_first_use(
    cli, make_image, tmp_path, local_catalog, http_server
):
    served = tmp_path / "candy.pth"
    torch.save(random_style_net(seed=5, config=TINY).state_dict(), served)
    local_catalog.serve("candy", served)
    photo = make_image("photo.png")
    first = cli("apply", photo, "-s", "candy")
    assert first.exit_code == 0, first.stderr
    assert model_path("candy").is_file()
    second = cli("apply", photo, "-s", "candy", "--overwrite", "-q")
    assert second.exit_code == 0, second.stderr
    assert http_server.requests["files/candy.pth"] == 1
    assert written(second) == [str(photo.with_name("photo.candy.png"))]


def test_a_rejected_torch_hub_copy_is_reported_on_the_console(
    cli, make_image, tmp_path, local_catalog, http_server, stylize_home
):
    served = tmp_path / "candy.pth"
    torch.save(random_style_net(seed=5, config=TINY).state_dict(), served)
    local_catalog.serve("candy", served)
    hub_copy = stylize_home / "torch-home" / "hub" / "checkpoints" / "candy.pth"
    hub_copy.parent.mkdir(parents=True)
    hub_copy.write_bytes(b"not the published file")
    result = cli("apply", make_image("photo.png"), "-s", "candy")
    assert result.exit_code == 0, result.stderr
    assert "warning: ignoring" in result.stderr and "candy.pth" in result.stderr
    assert http_server.requests["files/candy.pth"] == 1  # downloaded instead


def test_apply_imports_neither_torchvision_nor_onnx(style, make_image, stylize_home):
    photo = make_image("photo.png")
    code = (
        "import sys\n"
        "from stylize.cli import main\n"
        "try:\n"
        f"    main(['apply', {str(photo)!r}, '--style', 'tiny', '-q'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('torchvision', 'onnx') if m in sys.modules))\n"
    )
    environment = {**os.environ, "STYLIZE_HOME": str(stylize_home)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [str(photo.with_name("photo.tiny.png")), "[]"]


@pytest.mark.parametrize(
    "options",
    [
        ("--strength", "1.5"),
        ("--scale", "0"),
        ("--scale", "nan"),
        ("--scale", "inf"),
        ("--max-size", "8"),
        ("--tile-size", "32"),
        ("--batch-size", "0"),
        ("--precision", "fp64"),
        ("--overwrite", "--skip-existing"),
    ],
)
def test_bad_options_are_usage_errors(cli, style, make_image, tmp_path, monkeypatch, options):
    monkeypatch.chdir(tmp_path)
    result = cli("apply", make_image(), "-s", style, *options)
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image.png"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("-s", "nothing"), "no style named 'nothing'"),
        (("-s", "missing/model.onnx"), "style file not found"),
    ],
)
def test_failures_are_one_clear_line(cli, style, make_image, arguments, message):
    result = cli("apply", make_image(), *arguments)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_inputs_and_empty_folders_fail_before_any_work(cli, style, tmp_path):
    missing = cli("apply", tmp_path / "nope.png", "-s", style)
    assert missing.exit_code == 1 and "input not found" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("apply", tmp_path / "empty", "-s", style)
    assert empty.exit_code == 1 and "no images to stylize" in empty.stderr


def test_an_absurd_scale_is_an_error_for_the_image_not_a_crash(cli, style, make_image, tmp_path):
    photo = make_image("photo.png", size=(96, 72))
    result = cli("apply", photo, "-s", style, "--scale", "1000", "-o", tmp_path / "out.png")
    assert result.exit_code == 1
    assert f"{photo}: --scale 1000 would run the model on 96000x72000 pixels" in result.stderr
    assert "1 of 1 images failed" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_output_folder_that_cannot_be_created_is_one_clear_line(cli, style, make_image, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = cli("apply", make_image(), "-s", style, "-o", tmp_path / "a-file" / "styled")
    assert result.exit_code == 1
    assert "cannot create folder" in result.stderr and "unexpected" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["same output", "unknown style"])
def test_a_refused_run_creates_no_folder(cli, style, make_image, tmp_path, problem):
    first, second = make_image("a/photo.png"), make_image("b/photo.png", seed=1)
    arguments = [first, second, "-s", style] if problem == "same output" else [first, "-s", "no"]
    result = cli("apply", *arguments, "-o", tmp_path / "out" / "deeper")
    assert result.exit_code == 1
    assert not (tmp_path / "out").exists()


def test_an_input_given_twice_is_stylized_once(cli, style, make_image, tmp_path, monkeypatch):
    photo = make_image("photo.png")
    monkeypatch.chdir(tmp_path)
    result = cli("apply", photo, photo, tmp_path / "." / "photo.png", "-s", style, "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(Path("out") / "photo.tiny.png")]


def test_max_size_keeps_the_short_edge_large_enough_to_stylize(cli, style, make_image, tmp_path):
    photo = make_image("photo.png", size=(96, 72))
    result = cli("apply", photo, "-s", style, "--max-size", "16", "-o", tmp_path / "small.png")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "small.png") as image:
        assert image.size == (22, 16)


@pytest.mark.parametrize("name", ["out.v2", "2024.06"])
def test_an_output_with_a_suffix_that_is_no_image_type_is_a_folder(
    cli, style, make_image, tmp_path, name
):
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", style, "-o", tmp_path / name)
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(tmp_path / name / "photo.tiny.png")]
    assert (tmp_path / name).is_dir()


def test_a_trailing_separator_makes_an_image_name_a_folder(cli, style, make_image, tmp_path):
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", style, "-o", f"{tmp_path / 'out.png'}/")
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(tmp_path / "out.png" / "photo.tiny.png")]
    assert (tmp_path / "out.png").is_dir()


def test_a_run_where_every_input_fails_leaves_no_output_folder(cli, style, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.jpg"):
        (photos / name).write_bytes(b"not really an image")
    result = cli("apply", photos, "-s", style, "-o", tmp_path / "out" / "styled")
    assert result.exit_code == 1
    assert "2 of 2 images failed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_got_results_is_kept(cli, style, make_image, tmp_path):
    make_image("photos/a.png")
    (tmp_path / "photos" / "b.png").write_bytes(b"not really an image")
    result = cli("apply", tmp_path / "photos", "-s", style, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert written(result) == [str(tmp_path / "out" / "a.tiny.png")]


def test_an_offline_catalog_style_says_how_to_install_it(
    cli, make_image, tmp_path, local_catalog, http_server
):
    served = tmp_path / "candy-9.onnx"
    torch.save(random_style_net(seed=5, config=TINY).state_dict(), served)
    local_catalog.serve("candy", served)
    http_server.fail("files/candy-9.onnx", 404)
    result = cli("apply", make_image("photo.png"), "-s", "candy", "-q")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert message.startswith("error: the style network 'candy' is not installed: could not")
    assert "run 'stylize models import candy-9.onnx'" in message
    assert "set STYLIZE_MODEL_MIRROR" in message
    assert len(result.stderr.strip().splitlines()) == 1


def test_json_lists_every_input_with_its_status(cli, style, make_image, tmp_path):
    import json

    first = make_image("photos/a.png")
    make_image("photos/b.png", seed=1)
    (first.parent / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    (out).mkdir()
    make_image("out/b.tiny.png", seed=3)  # already there: skipped
    result = cli("apply", first.parent, "-s", style, "-o", out, "--skip-existing", "--json")
    assert result.exit_code == 1
    records = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    by_input = {Path(record["input"]).name: record for record in records}
    assert by_input["a.png"] == {
        "input": str(first),
        "output": str(out / "a.tiny.png"),
        "kind": "image",
        "status": "written",
        "error": None,
    }
    assert by_input["broken.png"]["status"] == "failed"
    assert "cannot read" in by_input["broken.png"]["error"]
    assert by_input["b.png"]["status"] == "skipped"
    assert (out / "a.tiny.png").is_file()
    assert "broken.png" in result.stderr


def test_json_and_standard_output_are_a_usage_error(cli, style, make_image):
    result = cli("apply", make_image(), "-s", style, "-o", "-", "--json")
    assert result.exit_code == 2
    message = " ".join(result.stderr.replace("│", " ").split())  # the usage box wraps lines
    assert "--json needs -o FILE" in message
