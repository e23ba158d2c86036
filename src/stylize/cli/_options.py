"""Options and checks that several commands share, so they read and behave the same."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

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


def non_negative_number(value: float) -> float:
    """Typer callback: 0 or a finite positive number (NaN and infinity are refused)."""
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be 0 or a positive number, got {value}")
    return value


def not_stdout(path: Path | None) -> Path | None:
    """Typer callback for an output path: "-" would be a file named "-", not standard output."""
    if path is not None and str(path) == "-":
        raise typer.BadParameter("writing images to standard output is not supported; give a path")
    return path


def parse_layers(text: str, option: str) -> tuple[str, ...]:
    """A comma-separated list of VGG19 layer names, or a usage error naming `option`."""
    from stylize.engine.vgg import check_taps

    try:
        return check_taps([name.strip() for name in text.split(",") if name.strip()])
    except StylizeError as error:
        raise typer.BadParameter(str(error), param_hint=f"'{option}'") from None


def parse_blend(text: str | None, style_count: int) -> tuple[float, ...] | None:
    """The --style-blend weights, one per style, or a usage error."""
    if text is None:
        return None
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a comma-separated list of numbers", param_hint="'--style-blend'"
        ) from None
    if len(weights) != style_count:
        raise typer.BadParameter(
            f"{len(weights)} weight(s) for {style_count} style(s): give one each",
            param_hint="'--style-blend'",
        )
    if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or not any(weights):
        raise typer.BadParameter(
            "weights must be non-negative numbers, not all zero", param_hint="'--style-blend'"
        )
    return weights
