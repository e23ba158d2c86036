"""Options and checks that several commands share, so they read and behave the same."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from stylize.engine.settings import SettingError, check_style_blend
from stylize.errors import StylizeError


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Do not show progress bars or messages.")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
StyleBlendOption = Annotated[
    str | None,
    typer.Option(
        help="Weights of several styles, e.g. 0.7,0.3 (normalized; equal by default).",
        show_default=False,
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Arithmetic of the network passes: auto uses bf16/fp16 where the hardware runs "
        "it fast, else fp32.",
    ),
]


def valid_model_name(name: str | None) -> str | None:
    """Typer callback: a store name, or a usage error saying what names may look like."""
    from stylize.store.registry import validate_name

    if name is None:
        return None
    try:
        return validate_name(name)
    except StylizeError as error:
        raise typer.BadParameter(str(error)) from None


def positive_number(value: float | None) -> float | None:
    """Typer callback: a finite number above 0 (None when the option is not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a positive number, got {value}")
    return value


def not_stdout(path: Path | None) -> Path | None:
    """Typer callback for an output path: "-" would be a file named "-", not standard output."""
    if path is not None and str(path) == "-":
        raise typer.BadParameter("writing images to standard output is not supported; give a path")
    return path


@contextmanager
def settings_usage_errors() -> Iterator[None]:
    """Reports a SettingError of the block (from a settings dataclass's `validate()`) as a
    usage error of the option it names (exit code 2), in the engine's words."""
    try:
        yield
    except SettingError as error:
        raise typer.BadParameter(error.problem, param_hint=f"'{error.option}'") from None


def parse_layers(text: str) -> tuple[str, ...]:
    """A comma-separated list of VGG19 layer names; the settings' `validate()` checks them."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_weights(text: str | None) -> tuple[float, ...] | None:
    """The --style-blend weights as numbers (None when not given), or a usage error."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a comma-separated list of numbers", param_hint="'--style-blend'"
        ) from None


def parse_blend(text: str | None, style_count: int) -> tuple[float, ...] | None:
    """The --style-blend weights, one per style, checked as optimize checks them, or a usage
    error."""
    weights = parse_weights(text)
    if weights is not None:
        with settings_usage_errors():
            check_style_blend(weights, style_count)
    return weights
