"""Options and checks that several commands share, so they read and behave the same."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from stylize.cli._parser import UsageError, choice
from stylize.engine.settings import SettingError, check_style_blend
from stylize.errors import StylizeError


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# What --device accepts; whether the machine has that device is checked when it is used.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")


def device_name(value: str) -> str:
    """`type=` of --device: a usage error for what names no device at all (`gpu`), before
    anything is loaded. Whether this machine has the device is a runtime error."""
    if not _DEVICE.fullmatch(value.strip().lower()):
        raise argparse.ArgumentTypeError(
            f"unknown device '{value}': choose auto, cpu, cuda, cuda:N (N a GPU's number) or mps"
        )
    return value


device_name.values = ["auto", "cpu", "cuda", "mps"]  # type: ignore[attr-defined]


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="Do not show progress bars or messages."
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps."
    )


def add_style_blend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--style-blend",
        metavar="WEIGHTS",
        help="Weights of several styles, e.g. 0.7,0.3 (normalized; equal by default).",
    )


def add_precision(parser: argparse.ArgumentParser, *, stylizing: bool = False) -> None:
    """--precision; `stylizing` for apply and sheet, where auto is fp32 on the CPU whichever
    engine runs (see docs/apply.md)."""
    if stylizing:
        text = (
            "Arithmetic of the network: auto is fp32 on the CPU (ONNX Runtime, without "
            "PyTorch) and bf16/fp16 on GPUs that run it fast."
        )
    else:
        text = (
            "Arithmetic of the network passes: auto uses bf16/fp16 where the hardware runs "
            "it fast, else fp32."
        )
    parser.add_argument("--precision", type=choice(Precision), default=Precision.auto, help=text)


def add_json(parser: argparse.ArgumentParser, text: str = "Print JSON for scripts.") -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help=text)


def model_name(name: str) -> str:
    """`type=` of a model's name in the store: a usage error saying what names may look like."""
    from stylize.store.paths import validate_name

    try:
        return validate_name(name)
    except StylizeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_number(text: str) -> float:
    """`type=` of a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def not_stdout(path: str) -> Path:
    """`type=` of an output path: "-" would be a file named "-", not standard output."""
    if path == "-":
        raise argparse.ArgumentTypeError(
            "writing images to standard output is not supported; give a path"
        )
    return Path(path)


def existing_file(text: str) -> Path:
    """`type=` of an input that must be a file (not a folder)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"'{text}' does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder, not a file")
    return path


@contextmanager
def settings_usage_errors() -> Iterator[None]:
    """Reports a SettingError of the block (from a settings dataclass's `validate()`) as a
    usage error of the option it names (exit code 2), in the engine's words."""
    try:
        yield
    except SettingError as error:
        raise UsageError(error.problem, f"'{error.option}'") from None


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
        raise UsageError(
            f"'{text}' is not a comma-separated list of numbers", "'--style-blend'"
        ) from None


def parse_blend(text: str | None, style_count: int) -> tuple[float, ...] | None:
    """The --style-blend weights, one per style, checked as optimize checks them, or a usage
    error."""
    weights = parse_weights(text)
    if weights is not None:
        with settings_usage_errors():
            check_style_blend(weights, style_count)
    return weights
