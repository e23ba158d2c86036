"""Fixtures shared by all tests: an isolated store, tiny images, random VGG19 weights, the CLI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def stylize_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store and torch hub folder; nothing touches the user's."""
    home = tmp_path_factory.mktemp("stylize-home")
    monkeypatch.setenv("STYLIZE_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch-home"))
    monkeypatch.delenv("STYLIZE_MODEL_MIRROR", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture(scope="session")
def random_vgg_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout VGG19 state dict (features only) with random weights."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def _vgg_template(tmp_path_factory: pytest.TempPathFactory, random_vgg_pth: Path) -> Path:
    """A store holding the random VGG19, imported once per session with --trust."""
    from stylize.store.registry import import_model

    home = tmp_path_factory.mktemp("vgg-store")
    previous = os.environ.get("STYLIZE_HOME")
    os.environ["STYLIZE_HOME"] = str(home)
    try:
        import_model(random_vgg_pth, name="vgg19", trust=True)
    finally:
        if previous is None:
            del os.environ["STYLIZE_HOME"]
        else:
            os.environ["STYLIZE_HOME"] = previous
    return home


@pytest.fixture
def vgg_home(stylize_home: Path, _vgg_template: Path) -> Path:
    """The test's store, with the random VGG19 installed as `vgg19`."""
    target = stylize_home / "models"
    target.mkdir(parents=True, exist_ok=True)
    for file in (_vgg_template / "models").iterdir():
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)
    return stylize_home


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Writes a small smooth test image and returns its path."""
    from PIL import Image

    def make(
        name: str = "image.png", size: tuple[int, int] = (48, 32), mode: str = "RGB", seed: int = 0
    ) -> Path:
        import numpy as np

        rng = np.random.default_rng(seed)
        width, height = size
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack(
            [
                x * 255 / max(width - 1, 1),
                y * 255 / max(height - 1, 1),
                (x + y) * 127 / max(width + height - 2, 1),
            ],
            axis=-1,
        )
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype("uint8")
        image = Image.fromarray(pixels, "RGB")
        if mode != "RGB":
            image = image.convert(mode)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return path

    return make


@pytest.fixture
def cli() -> Callable[..., object]:
    """Runs the real CLI in-process: cli("models", "list") -> click Result (stdout, stderr)."""
    from stylize.cli import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run
