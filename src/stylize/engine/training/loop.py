"""The training loop: a transform network learns to paint any photo in one artwork's style.

Owns `run_training` and its `TrainResult`: the network, the VGG19 loss network and the style
targets set up, one optimizer step per batch, the progress reports, and what the main process
writes on the way (previews, checkpoints, the loss log) and returns at the end (the weights and
their metadata for the store).

A run never loses its finished work to the work folder: a checkpoint or a preview that cannot
be written (a full disk, say) is a warning and training goes on, the previous checkpoint
intact; the result says when the last checkpoint could not be written, for the caller to
install the model anyway. Any other failure during the steps (out of memory, a loss that is no
longer finite, the loss log unwritable, an error of the data loader) stops the run with a
`TrainingStopped` that says which checkpoint to resume from.

The loss is optimize's: VGG19 content and style losses (relative errors, averaged over their
layers) and total variation, so the same default weights balance them.
"""

from __future__ import annotations

import base64
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from stylize.engine import memory
from stylize.engine.imageio import resize_long_edge, save_image, to_image, to_tensor
from stylize.engine.objective import PerceptualObjective
from stylize.engine.settings import TrainSchedule, option_name
from stylize.engine.training.checkpoints import (
    LOSS_LOG_FILE,
    LossLog,
    restore_checkpoint,
    write_checkpoint,
)
from stylize.engine.training.data import data_loader
from stylize.engine.training.distributed import (
    average_over_processes,
    parallel_model,
    process_group,
    stop_requests,
)
from stylize.engine.training.failures import (
    CheckpointWriteError,
    TrainingStopped,
    failure_reason,
    write_problem,
)
from stylize.engine.training.plan import PREVIEW_FOLDER, TrainingPlan
from stylize.engine.transformer import TransformerNet
from stylize.engine.vgg import VGGFeatures
from stylize.errors import StylizeError

ProgressCallback = Callable[..., None]
WarningCallback = Callable[[str], None]

THUMBNAIL_LONG_EDGE = 96
_LOSS_NAMES = ("content", "style", "tv", "loss")


@dataclass(frozen=True)
class TrainResult:
    """The outcome of `run_training`. `tensors` and `meta` (for the store) are empty on
    processes other than the main one.

    `checkpoint_step` is the step of the checkpoint in the work folder (None when there is
    none); `checkpoint_problem` says why the checkpoint of the last step (at the end or on
    Ctrl-C) could not be written, None when it was."""

    step: int
    interrupted: bool
    losses: dict[str, float]
    unreadable: tuple[str, ...]
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    checkpoint_step: int | None = None
    checkpoint_problem: str | None = None


def run_training(
    plan: TrainingPlan,
    vgg_weights: Mapping[str, Tensor],
    *,
    workers: int = 0,
    checkpoint_every: int = 1000,
    preview_every: int = 1000,
    on_progress: ProgressCallback | None = None,
    on_warning: WarningCallback | None = None,
) -> TrainResult:
    """Trains up to `plan.total_steps`, writing checkpoints, previews and the loss log into the
    work folder (main process only), and returns the trained weights.

    `on_progress(step, total_steps, **values)` follows every step, with `content`, `style`,
    `tv` (weighted losses), `loss` (their sum), `images_per_second` and `unreadable` (files
    skipped so far). The first Ctrl-C (SIGINT) stops after the current step and saves a
    checkpoint; the result then says `interrupted`.

    `on_warning(message)` (default: `warnings.warn`) gets one line for each periodic
    checkpoint or preview that could not be written; training goes on. A failed final (or
    Ctrl-C) checkpoint is not warned about but returned in the result. Any other failure during
    the steps raises `TrainingStopped` (a StylizeError), its message ending with where to
    resume from."""
    TrainSchedule(
        workers=workers, checkpoint_every=checkpoint_every, preview_every=preview_every
    ).validate()
    with process_group(plan.processes, plan.device), stop_requests() as stop_requested:
        trainer = _set_up(plan, vgg_weights, on_warning or _python_warning)
        return trainer.train(
            workers=workers,
            checkpoint_every=checkpoint_every,
            preview_every=preview_every,
            stop_requested=stop_requested,
            on_progress=on_progress,
        )


def _set_up(
    plan: TrainingPlan, vgg_weights: Mapping[str, Tensor], warn: WarningCallback
) -> _Trainer:
    """The trainer; running out of memory while it is built (the networks, the style image's
    pass) is one line naming the style image's size, as the memory guard could not tell."""
    try:
        return _Trainer(plan, vgg_weights, warn)
    except Exception as error:
        detail = memory.out_of_memory_detail(error)
        if detail is None:
            raise
        width, height = plan.style.size
        option = option_name(plan.settings, "style_size")
        message = (
            f"ran out of memory on {plan.device} setting up training (VGG19 and the style image "
            f"at {width}x{height}): {detail}; close other programs, or use a smaller {option}"
        )
    # Raised outside the handler, so the failed allocation's tensors can go at once.
    raise StylizeError(message)


def _python_warning(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class _Trainer:
    def __init__(
        self, plan: TrainingPlan, vgg_weights: Mapping[str, Tensor], warn: WarningCallback
    ) -> None:
        self.plan = plan
        self.warn = warn
        self.settings = settings = plan.settings
        self.runtime = runtime = plan.runtime
        self.device = device = runtime.device
        torch.manual_seed(settings.seed)
        self.memory_format = runtime.memory_format
        self.net = TransformerNet(settings.architecture).to(
            device=device, memory_format=self.memory_format
        )
        # The content targets need only the content layers, often shallower than the style's.
        self.vgg = VGGFeatures(vgg_weights, settings.content_layers + settings.style_layers).to(
            device
        )
        self.content_vgg = VGGFeatures(vgg_weights, settings.content_layers).to(device)
        self.objective = PerceptualObjective(
            settings.content_layers,
            settings.style_layers,
            settings.content_weight,
            settings.style_weight,
            settings.tv_weight,
        )
        # The style's Gram matrices are computed once, in full precision.
        with torch.no_grad():
            style = to_tensor(plan.style, device)
            self.style_targets = self.objective.style_targets([self.vgg(style)])
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate)
        self.scaler = runtime.grad_scaler()
        self.step = 0
        self.position = 0
        self.losses = dict.fromkeys(_LOSS_NAMES, math.nan)
        # The checkpoint in the work folder, and why the latest attempt to write one failed.
        self.checkpoint_step: int | None = None
        self.checkpoint_problem: str | None = None
        if plan.checkpoint is not None:
            self.step, self.position, self.losses = restore_checkpoint(
                plan.checkpoint,
                plan.checkpoint_path,
                net=self.net,
                optimizer=self.optimizer,
                scaler=self.scaler,
                device=device,
            )
            self.checkpoint_step = self.step
        self.model: nn.Module = parallel_model(self.net, device, plan.processes)

    def train(
        self,
        *,
        workers: int,
        checkpoint_every: int,
        preview_every: int,
        stop_requested: Callable[[], bool],
        on_progress: ProgressCallback | None,
    ) -> TrainResult:
        plan = self.plan
        main = plan.processes.is_main
        samples_per_step = self.settings.batch_size * plan.processes.world_size
        unreadable: dict[str, None] = {}
        interrupted = False
        if on_progress is not None:
            on_progress(self.step, plan.total_steps)
        with LossLog(plan.workdir / LOSS_LOG_FILE, self.step, enabled=main) as log:
            rate = _Rate(samples_per_step)
            # The step a failure stops: the one being trained, or the one just trained while
            # its row, previews and checkpoint are written.
            at = self.step + 1
            try:
                batches = data_loader(
                    plan.data,
                    self.settings,
                    plan.processes,
                    first_position=self.position,
                    steps=plan.total_steps - self.step,
                    workers=workers,
                    pin_memory=self.device.type == "cuda",
                )
                for pixels, skipped in batches:
                    self.losses, interrupted = self._step(pixels, stop_requested)
                    self.step += 1
                    self.position += samples_per_step
                    unreadable.update(dict.fromkeys(skipped))
                    if not all(math.isfinite(value) for value in self.losses.values()):
                        raise StylizeError(
                            f"the loss became {self.losses['loss']} (a smaller "
                            f"{option_name(self.settings, 'learning_rate')}, starting over, or "
                            "--precision fp32 may avoid it)"
                        )
                    values = {
                        **self.losses,
                        "images_per_second": rate.step_done(),
                        "unreadable": len(unreadable),
                    }
                    log.write(step=self.step, images=self.position, **values)
                    if on_progress is not None:
                        on_progress(self.step, plan.total_steps, **values)
                    finished = self.step >= plan.total_steps
                    if main and (finished or self.step % preview_every == 0):
                        self._write_previews()
                    if finished or interrupted or self.step % checkpoint_every == 0:
                        if main:
                            self._save_checkpoint(last=finished or interrupted)
                        else:
                            # The first process writes it (and warns when it cannot): what the
                            # others say on a failure assumes it did.
                            self.checkpoint_step = self.step
                    if interrupted:
                        break
                    at = self.step + 1
            except Exception as error:
                reason = self._failure_reason(error)
                raise TrainingStopped(at, reason, plan.workdir, self.checkpoint_step) from error
        tensors: dict[str, Tensor] = {}
        meta: dict[str, Any] = {}
        if main:
            tensors = {
                name: tensor.detach().to("cpu", torch.float32).contiguous()
                for name, tensor in self.net.state_dict().items()
            }
            meta = self._model_meta()
        return TrainResult(
            step=self.step,
            interrupted=interrupted,
            losses=dict(self.losses),
            unreadable=tuple(unreadable),
            tensors=tensors,
            meta=meta,
            checkpoint_step=self.checkpoint_step,
            checkpoint_problem=self.checkpoint_problem,
        )

    def _step(
        self, pixels: Tensor, stop_requested: Callable[[], bool]
    ) -> tuple[dict[str, float], bool]:
        """One optimizer step on a uint8 batch; returns the weighted losses (averaged over the
        processes) and whether any process was asked to stop."""
        content_image = pixels.to(self.device, non_blocking=True).float()
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            stylized = self.model(content_image) / 255
            with torch.no_grad():
                content_targets = self.objective.content_targets(
                    self.content_vgg(content_image / 255)
                )
            features = self.vgg(stylized)
        losses = self.objective(stylized, features, content_targets, self.style_targets)
        self.scaler.scale(losses[-1]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        report = losses.detach()
        report, stop = average_over_processes(report, stop_requested(), self.plan.processes)
        return dict(zip(_LOSS_NAMES, report.tolist(), strict=True)), stop

    def _failure_reason(self, error: BaseException) -> str:
        """Why the run stopped, in words; running out of memory names the batch that did not
        fit and how much was asked for (the memory guard's estimate was wrong, or something
        else took the memory meanwhile)."""
        detail = memory.out_of_memory_detail(error)
        if detail is None:
            return failure_reason(error, self.device)
        settings = self.settings
        batch, size = (option_name(settings, name) for name in ("batch_size", "image_size"))
        side = settings.image_size
        return (
            f"out of memory on {self.device} training batches of {settings.batch_size} crops of "
            f"{side}x{side} pixels ({detail}: close other programs, or start over with a smaller "
            f"{batch} or {size})"
        )

    def _write_previews(self) -> None:
        """Stylizes the preview images into the work folder. One that cannot be written is a
        warning: previews are for the user to look at, the model does not need them."""
        if not self.plan.previews:
            return
        folder = self.plan.workdir / PREVIEW_FOLDER
        self.net.eval()
        try:
            for stem, image in self.plan.previews:
                content = to_tensor(image, self.device).contiguous(memory_format=self.memory_format)
                with torch.no_grad(), self.runtime.autocast():
                    stylized = self.net(content * 255)
                path = folder / f"{stem}-{self.step:06d}.jpg"
                try:
                    folder.mkdir(exist_ok=True)
                    save_image(to_image(stylized.float() / 255), path, overwrite=True)
                except (OSError, StylizeError) as error:
                    self.warn(
                        f"could not write preview {path} at step {self.step} "
                        f"({write_problem(error)}); training goes on"
                    )
        finally:
            self.net.train()

    def _save_checkpoint(self, *, last: bool) -> None:
        """Writes the checkpoint. One that cannot be written leaves the previous one in place:
        a periodic one is a warning and training goes on (the next may succeed, and the model
        is installed at the end either way); the `last` one (at the end or on Ctrl-C) is left
        to the result for the caller to report."""
        plan = self.plan
        try:
            write_checkpoint(
                plan.checkpoint_path,
                step=self.step,
                position=self.position,
                settings=self.settings,
                style_sha256=plan.style_sha256,
                data=plan.data,
                net=self.net,
                optimizer=self.optimizer,
                scaler=self.scaler,
                device=self.device,
                losses=self.losses,
            )
        except CheckpointWriteError as error:
            self.checkpoint_problem = error.reason
            if not last:
                kept = (
                    f"the last checkpoint (step {self.checkpoint_step}) stays in {plan.workdir}"
                    if self.checkpoint_step is not None
                    else f"there is no checkpoint in {plan.workdir} yet"
                )
                self.warn(
                    f"could not write the checkpoint of step {self.step} ({error.reason}); "
                    f"training goes on; {kept}"
                )
            return
        self.checkpoint_step = self.step
        self.checkpoint_problem = None

    def _model_meta(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "kind": "style",
            "source": "trained",
            "description": (
                f"Trained by stylize in the style of {plan.style_image.name}, on "
                f"{len(plan.data.images)} images from {plan.data.folder.name or plan.data.folder}"
            ),
            "architecture": self.settings.architecture.to_dict(),
            "style_image": plan.style_image.name,
            "style_image_sha256": plan.style_sha256,
            "thumbnail": _thumbnail(plan.style),
            "training": {
                **self.settings.to_dict(),
                "steps": self.step,
                "images_seen": self.position,
                "data_images": len(plan.data.images),
                "processes": plan.processes.world_size,
                "precision": self.runtime.precision_name,
                "final_losses": dict(self.losses),
            },
        }


class _Rate:
    """Training images per second; the first step includes one-off warm-up work, so once
    there are more, the rate counts from its end."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.started = time.perf_counter()
        self.first_done: float | None = None
        self.steps = 0

    def step_done(self) -> float:
        now = time.perf_counter()
        self.steps += 1
        if self.first_done is None:
            self.first_done = now
            return self.samples_per_step / max(now - self.started, 1e-9)
        return (self.steps - 1) * self.samples_per_step / max(now - self.first_done, 1e-9)


def _thumbnail(image: Image.Image) -> str:
    """A small JPEG of the style image as a data URL (a few KB), for model listings."""
    if max(image.size) > THUMBNAIL_LONG_EDGE:
        image = resize_long_edge(image, THUMBNAIL_LONG_EDGE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
