"""The settings of `stylize optimize` and `stylize train`: their defaults and their validation.

This module imports no torch, so the command line reads its option defaults from these
dataclasses and checks values with their `validate()` at parse time, and the engine checks the
same values the same way. Each field names its command-line option once, in its metadata
(`field(default=..., metadata={"option": "--style-weight"})`); messages are built from that
name. A `SettingError` carries the option and the problem apart, so the command line can
report it as a usage error of that option and the engine as one sentence.

The VGG19 layer names and the transform network's architecture live here too: the settings
name them, and the layers decide the smallest image sizes a setting allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from stylize.errors import StylizeError

# VGG19 (torchvision's configuration "E") up to conv5_1, the deepest layer the losses use:
# convolution widths, and "M" for a 2x2 pooling. engine/vgg.py builds the network from it.
VGG19_LAYOUT: tuple[int | str, ...] = (
    *(64, 64, "M"),
    *(128, 128, "M"),
    *(256, 256, 256, 256, "M"),
    *(512, 512, 512, 512, "M"),
    512,
)
POOLINGS = ("max", "avg")
DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

OPTIMIZERS = ("lbfgs", "adam")
# "image" starts from an init image, which the caller reads from a file.
INIT_MODES = ("content", "noise", "style", "image")
FIRST_SCALE_EDGE = 256

# Training runs this many steps unless given steps or epochs.
DEFAULT_STEPS = 40_000
# apply with a style image: the side of the square the style predictor reads it at. 256 is
# what it was trained on; far larger only costs time and memory (4096 took 6 GB).
DEFAULT_STYLE_SIZE = 256
MIN_STYLE_SIZE = 64
MAX_STYLE_SIZE = 1024
# The transform network halves the image twice and doubles it back.
SIZE_MULTIPLE = 4
# The smallest side a style network takes: its quarter-resolution layers need a few pixels.
MIN_IMAGE_SIZE = 16
_MAX_CHANNELS = 1024
_MAX_RESIDUAL_BLOCKS = 64


class SettingError(StylizeError):
    """A setting the user gave out of its range.

    `option` names the setting as the command line does, `problem` says what is wrong in words
    that follow it ("must be at least 1, got 0"); the message is the two together unless the
    problem reads on its own."""

    def __init__(self, option: str, problem: str, message: str | None = None) -> None:
        super().__init__(message or f"{option} {problem}")
        self.option = option
        self.problem = problem


def option_name(settings: Any, name: str) -> str:
    """The command-line option of the field `name` of a settings dataclass (or instance)."""
    for item in fields(settings):
        if item.name == name:
            return str(item.metadata["option"])
    raise KeyError(name)


def _option(name: str, default: Any) -> Any:
    return field(default=default, metadata={"option": name})


# -- VGG19 layers ------------------------------------------------------------------------------


def _tap_layout() -> tuple[dict[str, int], dict[str, int]]:
    """Index in VGG19's `features` and number of poolings before it, for each ReLU."""
    indices: dict[str, int] = {}
    poolings: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for entry in VGG19_LAYOUT:
        if entry == "M":
            block, conv, index = block + 1, 0, index + 1
            continue
        conv += 1
        name = f"relu{block}_{conv}"
        indices[name] = index + 1
        poolings[name] = block - 1
        index += 2
    return indices, poolings


TAP_FEATURE_INDEX, _TAP_POOLINGS = _tap_layout()
TAP_NAMES: tuple[str, ...] = tuple(TAP_FEATURE_INDEX)


def _unknown_taps(taps: Sequence[str]) -> str | None:
    unknown = [name for name in taps if name not in TAP_FEATURE_INDEX]
    if not unknown:
        return None
    return (
        f"unknown VGG19 layer {', '.join(repr(name) for name in unknown)}: "
        f"choose from {', '.join(TAP_NAMES)}"
    )


def check_taps(taps: Sequence[str]) -> tuple[str, ...]:
    """The tap names, deduplicated in order; StylizeError for an unknown one."""
    problem = _unknown_taps(taps)
    if problem:
        raise StylizeError(problem)
    return tuple(dict.fromkeys(taps))


def min_input_size(taps: Sequence[str]) -> int:
    """The smallest image side that still gives the deepest tap at least one pixel."""
    return 2 ** max((_TAP_POOLINGS[name] for name in check_taps(taps)), default=0)


# -- checks shared by the settings ---------------------------------------------------------------


def _fail(settings: Any, name: str, problem: str) -> NoReturn:
    raise SettingError(option_name(settings, name), problem)


def _at_least(settings: Any, name: str, minimum: int) -> None:
    value = getattr(settings, name)
    if value is not None and value < minimum:
        _fail(settings, name, f"must be at least {minimum}, got {value}")


def _positive(settings: Any, name: str) -> None:
    value = getattr(settings, name)
    if not (math.isfinite(value) and value > 0):
        _fail(settings, name, f"must be a positive number, got {value}")


def _non_negative(settings: Any, name: str) -> None:
    value = getattr(settings, name)
    if not (math.isfinite(value) and value >= 0):
        _fail(settings, name, f"must be 0 or a positive number, got {value}")


def _one_of(settings: Any, name: str, choices: Sequence[str]) -> None:
    value = getattr(settings, name)
    if value not in choices:
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}"
        _fail(settings, name, f"must be {listed}, got {value!r}")


def _layers(settings: Any, name: str, kind: str) -> tuple[str, ...]:
    """The layers of field `name`, deduplicated; a SettingError when unknown or none."""
    layers = getattr(settings, name)
    option = option_name(settings, name)
    problem = _unknown_taps(layers)
    if problem:
        raise SettingError(option, problem, f"{option} has an {problem}")
    if not layers:
        _fail(settings, name, f"must name at least one {kind} layer")
    return tuple(dict.fromkeys(layers))


def check_style_blend(blend: Sequence[float], count: int | None = None) -> None:
    """Style blend weights: finite, non-negative, not all zero, and one per style (when the
    number of styles, `count`, is known)."""
    option = option_name(GatysSettings, "style_blend")
    if count is not None and len(blend) != count:
        problem = f"{len(blend)} weight(s) for {count} style(s): give one each"
        raise SettingError(option, problem, f"{option} has {problem}")
    if any(not math.isfinite(weight) or weight < 0 for weight in blend) or sum(blend) <= 0:
        raise SettingError(option, "weights must be non-negative numbers, not all zero")


# -- optimize ------------------------------------------------------------------------------------


def default_scale_count(size: int) -> int:
    """Enough scales to start near 256 px and double up to `size`."""
    if size <= FIRST_SCALE_EDGE:
        return 1
    return 1 + round(math.log2(size / FIRST_SCALE_EDGE))


@dataclass(frozen=True)
class GatysSettings:
    """What `stylize optimize` exposes; see docs/optimize.md for each setting. Checked by
    `validate()`, which `GatysTransfer` calls."""

    size: int = _option("--size", 512)
    style_scale: float = _option("--style-scale", 1.0)
    style_blend: tuple[float, ...] | None = _option("--style-blend", None)
    iterations: int = _option("--iterations", 500)
    optimizer: str = _option("--optimizer", "lbfgs")
    lr: float = _option("--lr", 0.02)
    content_weight: float = _option("--content-weight", 1.0)
    style_weight: float = _option("--style-weight", 1.0)
    tv_weight: float = _option("--tv-weight", 5.0)
    content_layers: tuple[str, ...] = _option("--content-layers", DEFAULT_CONTENT_LAYERS)
    style_layers: tuple[str, ...] = _option("--style-layers", DEFAULT_STYLE_LAYERS)
    pooling: str = _option("--pooling", "max")
    init: str = _option("--init", "content")
    # None: default_scale_count(size).
    scales: int | None = _option("--scales", None)
    preserve_color: bool = _option("--preserve-color", False)
    seed: int | None = _option("--seed", None)

    def validate(
        self, *, style_count: int | None = None, has_init_image: bool | None = None
    ) -> None:
        """SettingError for the first setting out of range. With `style_count`, the blend
        must give each style a weight; with `has_init_image`, init 'image' must have one."""
        if self.size < 1:
            _fail(self, "size", f"must be a positive number of pixels, got {self.size}")
        _positive(self, "style_scale")
        if self.style_blend is not None:
            check_style_blend(self.style_blend, style_count)
        _at_least(self, "iterations", 1)
        _at_least(self, "scales", 1)
        scales = self.scales or default_scale_count(self.size)
        if self.iterations < scales:
            problem = f"{self.iterations} iterations cannot cover {scales} scales: use more"
            raise SettingError(option_name(self, "iterations"), problem, problem)
        _one_of(self, "optimizer", OPTIMIZERS)
        _positive(self, "lr")
        for name in ("content_weight", "style_weight", "tv_weight"):
            _non_negative(self, name)
        if self.content_layers:
            _layers(self, "content_layers", "content")
        _layers(self, "style_layers", "style")
        _one_of(self, "pooling", POOLINGS)
        _one_of(self, "init", INIT_MODES)
        if has_init_image is not None and (self.init == "image") != has_init_image:
            _fail(self, "init", "'image' and an init image go together")


# -- train ---------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TransformerConfig:
    """Channel widths of the full-, half- and quarter-resolution stages, and residual blocks
    of the transform network (engine/transformer.py).

    The default is the pytorch/examples network (1,679,235 parameters).
    """

    channels: tuple[int, int, int] = (32, 64, 128)
    residual_blocks: int = 5

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or not all(
            _is_int(width) and 1 <= width <= _MAX_CHANNELS for width in self.channels
        ):
            raise StylizeError(
                f"transform network channels must be three integers from 1 to {_MAX_CHANNELS}, "
                f"got {list(self.channels)}"
            )
        if not (
            _is_int(self.residual_blocks) and 0 <= self.residual_blocks <= _MAX_RESIDUAL_BLOCKS
        ):
            raise StylizeError(
                f"transform network residual_blocks must be an integer from 0 to "
                f"{_MAX_RESIDUAL_BLOCKS}, got {self.residual_blocks!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "residual_blocks": self.residual_blocks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerConfig:
        """Reads `to_dict()` output (for example the `architecture` field of a model file)."""
        if not isinstance(data, Mapping):
            raise StylizeError(f"transform network architecture must be an object, got {data!r}")
        fields = {"channels", "residual_blocks"}
        if set(data) != fields:
            raise StylizeError(
                f"transform network architecture must have exactly the fields "
                f"{', '.join(sorted(fields))}, got {', '.join(sorted(map(str, data))) or 'none'}"
            )
        channels = data["channels"]
        if not isinstance(channels, (list, tuple)):
            raise StylizeError(f"transform network channels must be a list, got {channels!r}")
        return cls(channels=tuple(channels), residual_blocks=data["residual_blocks"])


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights; a run resumes only with the same settings.

    The loss weights are optimize's defaults (the same losses, so the same balance). Checked
    on construction: an instance is always valid, with its layers deduplicated.
    """

    image_size: int = _option("--image-size", 256)
    batch_size: int = _option("--batch-size", 4)
    learning_rate: float = _option("--lr", 1e-3)
    content_weight: float = _option("--content-weight", 1.0)
    style_weight: float = _option("--style-weight", 1.0)
    tv_weight: float = _option("--tv-weight", 5.0)
    style_size: int = _option("--style-size", 512)
    content_layers: tuple[str, ...] = _option("--content-layers", DEFAULT_CONTENT_LAYERS)
    style_layers: tuple[str, ...] = _option("--style-layers", DEFAULT_STYLE_LAYERS)
    seed: int = _option("--seed", 0)
    architecture: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        # Listed twice, a layer would count twice in the mean over layers.
        object.__setattr__(self, "content_layers", _layers(self, "content_layers", "content"))
        object.__setattr__(self, "style_layers", _layers(self, "style_layers", "style"))
        self.validate()

    def validate(self) -> None:
        """SettingError for the first setting out of range."""
        _layers(self, "content_layers", "content")
        _layers(self, "style_layers", "style")
        smallest = max(min_input_size(self.content_layers + self.style_layers), SIZE_MULTIPLE)
        if self.image_size < smallest or self.image_size % SIZE_MULTIPLE:
            _fail(
                self,
                "image_size",
                f"must be a multiple of {SIZE_MULTIPLE} and at least {smallest} for these "
                f"layers, got {self.image_size}",
            )
        needed = min_input_size(self.style_layers)
        if self.style_size < needed:
            _fail(
                self,
                "style_size",
                f"must be at least {needed} for these style layers, got {self.style_size}",
            )
        _at_least(self, "batch_size", 1)
        _positive(self, "learning_rate")
        for name in ("content_weight", "style_weight", "tv_weight"):
            _non_negative(self, name)
        _at_least(self, "seed", 0)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (for checkpoints and model metadata)."""
        return {
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "content_weight": self.content_weight,
            "style_weight": self.style_weight,
            "tv_weight": self.tv_weight,
            "style_size": self.style_size,
            "content_layers": list(self.content_layers),
            "style_layers": list(self.style_layers),
            "seed": self.seed,
            "architecture": self.architecture.to_dict(),
        }


@dataclass(frozen=True)
class TrainSchedule:
    """How long training runs and how often it saves: unlike `TrainSettings`, these may change
    when a run is resumed. `steps` None means `DEFAULT_STEPS`, unless `epochs` is given."""

    steps: int | None = _option("--steps", None)
    epochs: int | None = _option("--epochs", None)
    checkpoint_every: int = _option("--checkpoint-every", 1000)
    preview_every: int = _option("--preview-every", 1000)
    workers: int = _option("--workers", 4)

    def validate(self) -> None:
        """SettingError for the first setting out of range."""
        if self.steps is not None and self.epochs is not None:
            steps, epochs = option_name(self, "steps"), option_name(self, "epochs")
            problem = f"give {steps} or {epochs}, not both"
            raise SettingError(epochs, problem, problem)
        _at_least(self, "steps", 1)
        _at_least(self, "epochs", 1)
        _at_least(self, "checkpoint_every", 1)
        _at_least(self, "preview_every", 1)
        _at_least(self, "workers", 0)
