"""Preparing a training job: everything that can be checked before training starts.

Owns `prepare_training` and the `TrainingPlan` it returns: the style image and the preview
images read (and checked to be large enough for the network), the data folder scanned, the step
budget worked out, the work folder checked (a file written there atomically, as checkpoints
and previews are), and its checkpoint read and checked when the job resumes one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stylize.atomic import atomic_write
from stylize.engine import memory
from stylize.engine.imageio import load_image, resize_long_edge
from stylize.engine.layers import ConvLayer, UpsampleConvLayer
from stylize.engine.runtime import Runtime
from stylize.engine.settings import (
    SIZE_MULTIPLE,
    TrainSchedule,
    TrainSettings,
    TransformerConfig,
    min_input_size,
    option_name,
)
from stylize.engine.training.checkpoints import CHECKPOINT_FILE, check_resumable, read_checkpoint
from stylize.engine.training.data import TrainingData, scan_training_data
from stylize.engine.training.distributed import Processes, process_device
from stylize.engine.training.failures import write_problem
from stylize.engine.transformer import TransformerNet
from stylize.errors import StylizeError

# Fewer photos than this rarely generalize to new ones; the CLI warns.
FEW_IMAGES = 1000
PREVIEW_LONG_EDGE = 512
PREVIEW_FOLDER = "previews"
# What the work folder probe writes: a little data, so that a full disk shows before step 1.
_PROBE_BYTES = 4096


@dataclass(frozen=True)
class TrainingPlan:
    """A checked training job: what `prepare_training` found, ready for `run_training`."""

    settings: TrainSettings
    style_image: Path
    style: Image.Image
    style_sha256: str
    data: TrainingData
    workdir: Path
    total_steps: int
    runtime: Runtime
    processes: Processes
    previews: tuple[tuple[str, Image.Image], ...]
    checkpoint: Mapping[str, Any] | None

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def start_step(self) -> int:
        return int(self.checkpoint["step"]) if self.checkpoint else 0

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / CHECKPOINT_FILE


def prepare_training(
    *,
    style_image: Path,
    data_folder: Path,
    workdir: Path,
    settings: TrainSettings,
    runtime: Runtime,
    steps: int | None = None,
    epochs: int | None = None,
    resume: bool = False,
    previews: Sequence[Path] = (),
) -> TrainingPlan:
    """Checks everything that can be checked before training starts and reads the inputs.

    Exactly one of `steps` and `epochs` sets the budget. With `resume` the checkpoint in
    `workdir` must exist and match the settings, the style image and the data folder; without
    it, `workdir` must not hold one."""
    if steps is None and epochs is None:
        raise StylizeError("give either a number of steps or a number of epochs")
    TrainSchedule(steps=steps, epochs=epochs).validate()
    processes = Processes.from_environment()
    # Each process of a multi-GPU run computes on its own GPU, with the same policy.
    runtime = dataclasses.replace(runtime, device=process_device(runtime.device, processes))
    style = resize_long_edge(load_image(style_image).rgb, settings.style_size)
    if min(style.size) < min_input_size(settings.style_layers):
        option = option_name(settings, "style_size")
        raise StylizeError(
            f"the style image is {style.width}x{style.height} pixels at {option} "
            f"{settings.style_size}, too narrow for the style layers (at least "
            f"{min_input_size(settings.style_layers)} pixels a side): use a larger {option}"
        )
    style_sha256 = hashlib.sha256(Path(style_image).read_bytes()).hexdigest()
    data = scan_training_data(data_folder)
    if steps is None:
        assert epochs is not None
        samples_per_step = settings.batch_size * processes.world_size
        steps = math.ceil(epochs * len(data.images) / samples_per_step)
    loaded_previews = (
        _load_previews(previews, min_network_input(settings.architecture))
        if processes.is_main
        else ()
    )
    workdir = Path(workdir)
    if processes.is_main:
        _check_folder(workdir, "work folder")
        if loaded_previews:
            _check_folder(workdir / PREVIEW_FOLDER, "previews folder")
    checkpoint_path = workdir / CHECKPOINT_FILE
    checkpoint = None
    if resume:
        if not checkpoint_path.is_file():
            raise StylizeError(f"no checkpoint to resume in {workdir}; start without --resume")
        checkpoint = read_checkpoint(checkpoint_path)
        check_resumable(checkpoint, checkpoint_path, settings, style_sha256, data, steps)
    elif checkpoint_path.exists():
        raise StylizeError(
            f"{workdir} already holds a training checkpoint: add --resume to continue it, or "
            "remove that folder (or pick another --workdir) to start over"
        )
    # Last: what the checks above read (the checkpoint among them) is held already.
    check_training_memory(settings, style.size, runtime, processes, resuming=resume)
    return TrainingPlan(
        settings=settings,
        style_image=Path(style_image),
        style=style,
        style_sha256=style_sha256,
        data=data,
        workdir=workdir,
        total_steps=steps,
        runtime=runtime,
        processes=processes,
        previews=loaded_previews,
        checkpoint=checkpoint,
    )


def training_estimate(
    settings: TrainSettings, style_size: tuple[int, int], runtime: Runtime
) -> memory.Estimate:
    """What a training step (and the style image's pass before step 1) of `settings` needs."""
    return memory.train_estimate(
        settings.image_size,
        settings.batch_size,
        style_size,
        config=settings.architecture,
        content_layers=settings.content_layers,
        style_layers=settings.style_layers,
        reduced_precision=runtime.dtype is not None,
    )


def check_training_memory(
    settings: TrainSettings,
    style_size: tuple[int, int],
    runtime: Runtime,
    processes: Processes,
    *,
    resuming: bool = False,
) -> None:
    """StylizeError, before anything is trained (or VGG19 loaded), when a step will not fit in
    what the device has left; the message says which --batch-size or --image-size would.

    Processes training on the CPU of one machine share its memory, so each gets its part."""
    if not memory.checks_enabled():
        return
    available = memory.available_memory(runtime.device)
    if available is None:
        return
    if runtime.device.type == "cpu" and processes.local_world_size > 1:
        available = memory.Available(
            available.bytes // processes.local_world_size,
            f"{available.limit}, for each of {processes.local_world_size} processes",
        )
    estimate = training_estimate(settings, style_size, runtime)
    if estimate.total <= available.bytes:
        return

    def fits(**changes: int) -> bool:
        changed = dataclasses.replace(settings, **changes)
        scaled = style_size
        if "style_size" in changes:
            ratio = changes["style_size"] / max(style_size)
            scaled = (max(1, round(style_size[0] * ratio)), max(1, round(style_size[1] * ratio)))
        return training_estimate(changed, scaled, runtime).total <= available.bytes

    batch_option, size_option, style_option = (
        option_name(settings, name) for name in ("batch_size", "image_size", "style_size")
    )
    advice = []
    batch = memory.largest_fitting(lambda value: fits(batch_size=value), 1, settings.batch_size)
    if batch is not None:
        advice.append(f"{batch_option} {batch}")
    smallest = max(min_input_size(settings.content_layers + settings.style_layers), SIZE_MULTIPLE)
    quarters = memory.largest_fitting(
        lambda value: fits(image_size=value * SIZE_MULTIPLE),
        -(-smallest // SIZE_MULTIPLE),
        settings.image_size // SIZE_MULTIPLE,
    )
    if quarters is not None:
        advice.append(f"{size_option} {quarters * SIZE_MULTIPLE} or smaller")
    if estimate.style_pass > estimate.image_pass + estimate.optimizer_state:
        style = memory.largest_fitting(
            lambda value: fits(style_size=value),
            min_input_size(settings.style_layers),
            max(style_size),
        )
        if style is not None:  # what does not fit is the style image: say that first
            advice.insert(0, f"{style_option} {memory.round_down(style)} or smaller")
    if advice and resuming:
        # A run resumes only with the settings it started with.
        advice_text = f"start a new run with {', or '.join(advice)}, or close other programs"
    elif advice:
        advice_text = f"use {', or '.join(advice)}"
    else:
        advice_text = "close other programs to free memory"
    memory.check_fits(
        estimate.total,
        available,
        f"training with {batch_option} {settings.batch_size} and {size_option} "
        f"{settings.image_size} on {runtime.device}",
        advice_text,
    )


def min_network_input(config: TransformerConfig) -> int:
    """The smallest image side the transform network of `config` takes.

    Reflection padding needs more pixels than it pads: the 9x9 convolutions pad by 4, at full
    resolution at both ends of the network; the 3x3 ones by 1, down to a quarter of the
    resolution (the stride-2 convolutions and the residual blocks). Worked out by following a
    side through the network's layers, so it holds for any configuration."""
    with torch.device("meta"):
        net = TransformerNet(config)
    layers = [stage.conv for stage in net.encoder]
    for block in net.residual_blocks:
        layers += [block.conv1, block.conv2]
    layers += [stage.conv for stage in net.decoder]
    side = 1
    while not _passes(layers, side):
        side += 1
    return side


def _passes(layers: Sequence[torch.nn.Module], side: int) -> bool:
    for layer in layers:
        if isinstance(layer, UpsampleConvLayer):
            side *= 2  # nearest upsampling; its padding replicates, which takes any size
        elif isinstance(layer, ConvLayer):
            if side <= layer.padding:
                return False
            (kernel, _), (stride, _) = layer.conv2d.kernel_size, layer.conv2d.stride
            side = (side + 2 * layer.padding - kernel) // stride + 1
        else:
            raise TypeError(f"unexpected layer {type(layer).__name__} in the transform network")
    return side > 0


def _load_previews(paths: Sequence[Path], min_side: int) -> tuple[tuple[str, Image.Image], ...]:
    previews: list[tuple[str, Image.Image]] = []
    stems: set[str] = set()
    for path in paths:
        image = load_image(path).rgb
        scaled = ""
        if max(image.size) > PREVIEW_LONG_EDGE:
            image = resize_long_edge(image, PREVIEW_LONG_EDGE)
            scaled = f" once scaled to {PREVIEW_LONG_EDGE} pixels on its long edge"
        if min(image.size) < min_side:
            raise StylizeError(
                f"preview image {path} is {image.width}x{image.height} pixels{scaled}, too small "
                f"for the style network: it needs at least {min_side} pixels a side"
            )
        stem, number = Path(path).stem, 2
        while stem in stems:
            stem, number = f"{Path(path).stem}-{number}", number + 1
        stems.add(stem)
        previews.append((stem, image))
    return tuple(previews)


def _check_folder(folder: Path, what: str) -> None:
    """Creates `folder` and writes a small file into it the way checkpoints and previews are
    written (atomically), then removes it."""
    probe = folder / f".write-test-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(probe) as file:
            file.write(bytes(_PROBE_BYTES))
        probe.unlink()
    except OSError as error:
        raise StylizeError(f"cannot use {what} {folder}: {write_problem(error)}") from error
