"""Options and checks that several commands share, so they read and behave the same."""

from __future__ import annotations

from enum import Enum
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
