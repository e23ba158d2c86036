"""Settings: torch-free, one option name per field, one validate() per dataclass."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from stylize.engine.settings import (
    DEFAULT_STEPS,
    VGG19_LAYOUT,
    GatysSettings,
    SettingError,
    TrainSchedule,
    TrainSettings,
    option_name,
)


def test_importing_the_settings_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import stylize.engine.settings\n"
        "assert not [name for name in sys.modules if name.split('.')[0] in "
        "('torch', 'torchvision')], 'torch imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_the_layout_is_torchvisions_vgg19_up_to_conv5_1() -> None:
    from torchvision.models.vgg import cfgs

    fourth_pool = [index for index, entry in enumerate(cfgs["E"]) if entry == "M"][3]
    assert list(VGG19_LAYOUT) == list(cfgs["E"][: fourth_pool + 2])


@pytest.mark.parametrize("settings", [GatysSettings, TrainSettings, TrainSchedule])
def test_every_setting_names_its_option_once(settings: type) -> None:
    options = [
        option_name(settings, item.name) for item in fields(settings) if item.name != "architecture"
    ]
    assert all(option.startswith("--") for option in options)
    assert len(set(options)) == len(options)


def test_errors_carry_the_option_and_the_problem_apart() -> None:
    with pytest.raises(SettingError) as caught:
        TrainSettings(learning_rate=0.0)
    assert caught.value.option == "--lr"
    assert caught.value.problem == "must be a positive number, got 0.0"
    assert str(caught.value) == "--lr must be a positive number, got 0.0"

    with pytest.raises(SettingError) as caught:
        GatysSettings(iterations=2, scales=3).validate()
    assert caught.value.option == "--iterations"
    assert str(caught.value) == "2 iterations cannot cover 3 scales: use more"


def test_gatys_settings_are_checked_against_the_styles_and_init_image() -> None:
    GatysSettings().validate()
    GatysSettings(style_blend=(1.0, 3.0)).validate(style_count=2)
    with pytest.raises(SettingError, match=r"--style-blend has 2 weight\(s\) for 3 style\(s\)"):
        GatysSettings(style_blend=(1.0, 3.0)).validate(style_count=3)
    with pytest.raises(SettingError, match="weights must be non-negative numbers, not all zero"):
        GatysSettings(style_blend=(0.0, 0.0)).validate()
    with pytest.raises(SettingError, match="--init 'image' and an init image go together"):
        GatysSettings(init="image").validate(has_init_image=False)
    with pytest.raises(SettingError, match="--pooling must be max or avg, got 'l2'"):
        GatysSettings(pooling="l2").validate()
    with pytest.raises(SettingError, match="--content-layers has an unknown VGG19 layer"):
        GatysSettings(content_layers=("conv1_1",)).validate()
    # Optimize may do without content layers (style only); training may not.
    GatysSettings(content_layers=()).validate()
    with pytest.raises(SettingError, match="--content-layers must name at least one content"):
        TrainSettings(content_layers=())


def test_train_schedule() -> None:
    TrainSchedule().validate()
    TrainSchedule(epochs=2).validate()
    with pytest.raises(SettingError, match="give --steps or --epochs, not both"):
        TrainSchedule(steps=1, epochs=1).validate()
    for name, value, message in [
        ("steps", 0, "--steps must be at least 1, got 0"),
        ("epochs", 0, "--epochs must be at least 1, got 0"),
        ("checkpoint_every", 0, "--checkpoint-every must be at least 1, got 0"),
        ("preview_every", -1, "--preview-every must be at least 1, got -1"),
        ("workers", -1, "--workers must be at least 0, got -1"),
    ]:
        with pytest.raises(SettingError, match=message):
            TrainSchedule(**{name: value}).validate()  # type: ignore[arg-type]
    assert DEFAULT_STEPS == 40_000


def test_optimize_options_take_the_settings_defaults() -> None:
    import inspect

    from stylize.cli.optimize import optimize

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(optimize).parameters.items()
    }
    settings = GatysSettings()
    for name in ("size", "style_scale", "iterations", "content_weight", "style_weight"):
        assert defaults[name] == getattr(settings, name), name
    assert defaults["optimizer"].value == settings.optimizer
    assert defaults["pooling"].value == settings.pooling
    assert defaults["style_layers"].split(",") == list(settings.style_layers)
