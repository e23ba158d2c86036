"""Options and checks that several commands share, so they read and behave the same."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

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
    """Typer callback for --device: a usage error for what names no device at all (`gpu`),
    before anything is loaded. Whether this machine has the device is a runtime error."""
    if not _DEVICE.fullmatch(value.strip().lower()):
        raise typer.BadParameter(
            f"unknown device '{value}': choose auto, cpu, cuda, cuda:N (N a GPU's number) or mps"
        )
    return value


QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Do not show progress bars or messages.")
]
DeviceOption = Annotated[
    str,
    typer.Option("--device", callback=device_name, help="auto, cpu, cuda, cuda:N or mps."),
]
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
# apply and sheet: on the CPU auto is fp32, whichever engine runs (see docs/apply.md).
StylizePrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Arithmetic of the network: auto is fp32 on the CPU (ONNX Runtime, without "
        "PyTorch) and bf16/fp16 on GPUs that run it fast.",
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


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def not_stdout(path: str | Path | None) -> str | Path | None:
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


# A flag followed by one of these was almost certainly meant to be set with it (`--quiet true`).
_FLAG_VALUES = ("true", "false")


def plain_flags(command: Any, ctx: typer.Context) -> None:
    """Shows the flags of `command` and of its subcommands (--help too) without a value in
    `--help`. Typer's rich help (0.2x) prints the type of every option, flags included, as if
    they took a value (`--quiet -q <bool>`), where its plain help leaves flags out; an explicit
    metavar is what it prints instead, and an empty one is nothing. Click ignores a flag's
    metavar everywhere else."""
    for param in command.get_params(ctx):
        if param.param_type_name == "option" and param.is_flag and param.metavar is None:
            param.metavar = ""
    for sub in _subcommands(command, ctx):
        plain_flags(sub, ctx)


def refuse_flag_values(command: Any, ctx: typer.Context, args: Sequence[str]) -> None:
    """A usage error for a flag followed by `true` or `false` (`--preserve-color true`), which
    would be read as an input named 'true', unless a file of that name exists. `args` are the
    command line after `command`'s name; subcommands are followed."""
    options = [param for param in command.get_params(ctx) if param.param_type_name == "option"]
    flags = {name for param in options if param.is_flag for name in param.opts}
    flags |= {name for param in options if param.is_flag for name in param.secondary_opts}
    valued = {name: param.nargs for param in options if not param.is_flag for name in param.opts}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return
        if arg in flags and index + 1 < len(args):
            value = args[index + 1]
            if value.lower() in _FLAG_VALUES and not os.path.exists(value):
                raise typer.BadParameter(
                    f"it is a flag, which takes no value; leave out '{value}'",
                    param_hint=f"'{arg}'",
                )
        elif arg in valued:
            index += valued[arg]
        elif not arg.startswith("-") and _subcommand(command, ctx, arg) is not None:
            refuse_flag_values(_subcommand(command, ctx, arg), ctx, args[index + 1 :])
            return
        index += 1


def _subcommands(command: Any, ctx: typer.Context) -> list[Any]:
    if not hasattr(command, "list_commands"):
        return []
    found = (_subcommand(command, ctx, name) for name in command.list_commands(ctx))
    return [sub for sub in found if sub is not None]


def _subcommand(command: Any, ctx: typer.Context, name: str) -> Any:
    """The subcommand `name` of a group (None for a command, or no such subcommand)."""
    return command.get_command(ctx, name) if hasattr(command, "get_command") else None
