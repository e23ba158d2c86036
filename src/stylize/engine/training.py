"""Training a transform network to paint any photo in the style of one artwork (Johnson et al.).

The loss is optimize's: VGG19 content and style losses (relative errors, averaged over their
layers) and total variation, so the same default weights balance them.

The stream of training samples is a pure function of the seed, the image count and the position
in the stream: epoch `e` visits the images in a permutation seeded by (seed, e), and the sample
at position `p` is cropped with a generator seeded by (seed, p). A checkpoint only has to record
the position to resume the data exactly where it stopped, whatever the number of loader
processes. Under `torchrun` every process takes its own slice of each step's samples.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from stylize.engine.imageio import (
    find_images,
    load_image,
    resize_long_edge,
    save_image,
    to_image,
    to_tensor,
)
from stylize.engine.losses import content_loss, gram_matrix, style_loss, total_variation_loss
from stylize.engine.transformer import TransformerConfig, TransformerNet
from stylize.engine.vgg import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    VGGFeatures,
    check_taps,
    min_input_size,
)
from stylize.errors import StylizeError

ProgressCallback = Callable[..., None]

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_LOG_FILE = "losses.csv"
PREVIEW_FOLDER = "previews"
CHECKPOINT_FORMAT = 1
# Fewer photos than this rarely generalize to new ones; the CLI warns.
FEW_IMAGES = 1000
PREVIEW_LONG_EDGE = 512
THUMBNAIL_LONG_EDGE = 96
LOSS_LOG_COLUMNS = (
    "step",
    "images",
    "content",
    "style",
    "tv",
    "loss",
    "images_per_second",
    "unreadable",
)
_LOSS_NAMES = ("content", "style", "tv", "loss")
# The transform network halves the image twice and doubles it back.
_SIZE_MULTIPLE = 4
# Separate seed streams, so the order of epoch e and the crop of position e never coincide.
_ORDER_STREAM = 0
_CROP_STREAM = 1


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights; a run resumes only with the same settings.

    The loss weights are optimize's defaults: see the module docstring.
    """

    image_size: int = 256
    batch_size: int = 4
    learning_rate: float = 1e-3
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 5.0
    style_size: int = 512
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    seed: int = 0
    architecture: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        # Listed twice, a layer would count twice in the mean over layers.
        object.__setattr__(self, "content_layers", check_taps(self.content_layers))
        object.__setattr__(self, "style_layers", check_taps(self.style_layers))
        if not self.content_layers:
            raise StylizeError("at least one content layer is needed (--content-layers)")
        if not self.style_layers:
            raise StylizeError("at least one style layer is needed (--style-layers)")
        smallest = max(min_input_size(self.content_layers + self.style_layers), _SIZE_MULTIPLE)
        if self.image_size < smallest or self.image_size % _SIZE_MULTIPLE:
            raise StylizeError(
                f"--image-size must be a multiple of {_SIZE_MULTIPLE} and at least {smallest} "
                f"for these layers, got {self.image_size}"
            )
        if self.style_size < min_input_size(self.style_layers):
            raise StylizeError(
                f"--style-size must be at least {min_input_size(self.style_layers)} for these "
                f"style layers, got {self.style_size}"
            )
        if self.batch_size < 1:
            raise StylizeError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise StylizeError(f"--lr must be a positive number, got {self.learning_rate}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                option = "--" + name.replace("_", "-")
                raise StylizeError(f"{option} must be a non-negative number, got {value}")
        if self.seed < 0:
            raise StylizeError(f"--seed must be a non-negative integer, got {self.seed}")

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
class TrainingData:
    """The image files of a data folder, found recursively, in a stable order."""

    folder: Path
    images: tuple[Path, ...]

    @property
    def fingerprint(self) -> str:
        """Changes when files are added, removed or renamed (a resume needs the same list)."""
        names = "\n".join(path.relative_to(self.folder).as_posix() for path in self.images)
        return hashlib.sha256(names.encode()).hexdigest()


def scan_training_data(folder: Path) -> TrainingData:
    """The images under `folder`; StylizeError when there are none or none can be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylizeError(f"data folder not found: {folder}")
    images = tuple(find_images(folder, recursive=True))
    if not images:
        raise StylizeError(f"no image files in {folder} or its subfolders")
    # Unreadable files are skipped during training; this only makes sure something is left.
    for path in images:
        try:
            load_image(path)
        except StylizeError:
            continue
        return TrainingData(folder=folder, images=images)
    raise StylizeError(f"none of the {len(images)} image files in {folder} can be read")


@dataclass(frozen=True)
class Processes:
    """This process's place among those `torchrun` started (rank 0 of 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Processes:
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            )
        except ValueError:
            raise StylizeError(
                "RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)"
            ) from None


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
    device: torch.device
    processes: Processes
    previews: tuple[tuple[str, Image.Image], ...]
    checkpoint: Mapping[str, Any] | None

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
    device: torch.device,
    steps: int | None = None,
    epochs: int | None = None,
    resume: bool = False,
    previews: Sequence[Path] = (),
) -> TrainingPlan:
    """Checks everything that can be checked before training starts and reads the inputs.

    Exactly one of `steps` and `epochs` sets the budget. With `resume` the checkpoint in
    `workdir` must exist and match the settings, the style image and the data folder; without
    it, `workdir` must not hold one."""
    if (steps is None) == (epochs is None):
        raise StylizeError("give either a number of steps or a number of epochs")
    processes = Processes.from_environment()
    device = _process_device(device, processes)
    style = resize_long_edge(load_image(style_image).rgb, settings.style_size)
    if min(style.size) < min_input_size(settings.style_layers):
        raise StylizeError(
            f"the style image is {style.width}x{style.height} pixels at --style-size "
            f"{settings.style_size}, too narrow for the style layers (at least "
            f"{min_input_size(settings.style_layers)} pixels a side): use a larger --style-size"
        )
    style_sha256 = hashlib.sha256(Path(style_image).read_bytes()).hexdigest()
    data = scan_training_data(data_folder)
    samples_per_step = settings.batch_size * processes.world_size
    if steps is None:
        assert epochs is not None
        if epochs < 1:
            raise StylizeError(f"--epochs must be at least 1, got {epochs}")
        steps = math.ceil(epochs * len(data.images) / samples_per_step)
    if steps < 1:
        raise StylizeError(f"--steps must be at least 1, got {steps}")
    loaded_previews = _load_previews(previews) if processes.is_main else ()
    workdir = Path(workdir)
    if processes.is_main:
        _check_workdir(workdir)
    checkpoint_path = workdir / CHECKPOINT_FILE
    checkpoint = None
    if resume:
        if not checkpoint_path.is_file():
            raise StylizeError(f"no checkpoint to resume in {workdir}; start without --resume")
        checkpoint = _read_checkpoint(checkpoint_path)
        _check_resumable(checkpoint, checkpoint_path, settings, style_sha256, data, steps)
    elif checkpoint_path.exists():
        raise StylizeError(
            f"{workdir} already holds a training checkpoint: add --resume to continue it, or "
            "remove that folder (or pick another --workdir) to start over"
        )
    return TrainingPlan(
        settings=settings,
        style_image=Path(style_image),
        style=style,
        style_sha256=style_sha256,
        data=data,
        workdir=workdir,
        total_steps=steps,
        device=device,
        processes=processes,
        previews=loaded_previews,
        checkpoint=checkpoint,
    )


def _process_device(device: torch.device, processes: Processes) -> torch.device:
    """Under torchrun each process on a machine takes the GPU of its local rank."""
    if processes.world_size == 1:
        return device
    if device.type == "cuda":
        if processes.local_rank >= torch.cuda.device_count():
            raise StylizeError(
                f"process {processes.local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} found): start at most that many per machine"
            )
        return torch.device("cuda", processes.local_rank)
    if device.type != "cpu":
        raise StylizeError(
            f"training in several processes needs CUDA GPUs or the CPU, not {device}"
        )
    return device


def _load_previews(paths: Sequence[Path]) -> tuple[tuple[str, Image.Image], ...]:
    previews: list[tuple[str, Image.Image]] = []
    stems: set[str] = set()
    for path in paths:
        image = load_image(path).rgb
        if max(image.size) > PREVIEW_LONG_EDGE:
            image = resize_long_edge(image, PREVIEW_LONG_EDGE)
        stem, number = Path(path).stem, 2
        while stem in stems:
            stem, number = f"{Path(path).stem}-{number}", number + 1
        stems.add(stem)
        previews.append((stem, image))
    return tuple(previews)


def _check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StylizeError(f"cannot use work folder {workdir}: {error.strerror or error}") from None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StylizeError(f"cannot read checkpoint {path}: {error}") from None
    required = ("step", "position", "settings", "style_sha256", "data", "model", "optimizer")
    if (
        not isinstance(state, dict)
        or state.get("format") != CHECKPOINT_FORMAT
        or any(key not in state for key in required)
    ):
        raise StylizeError(f"{path} is not a stylize training checkpoint of this version")
    return state


def _check_resumable(
    checkpoint: Mapping[str, Any],
    path: Path,
    settings: TrainSettings,
    style_sha256: str,
    data: TrainingData,
    steps: int,
) -> None:
    saved = checkpoint["settings"]
    differences = [
        f"{name} {saved.get(name)!r} there, {value!r} now"
        for name, value in settings.to_dict().items()
        if saved.get(name) != value
    ]
    if differences:
        raise StylizeError(
            f"cannot resume from {path}: it was trained with other settings "
            f"({'; '.join(differences)}); pass the options of the run that wrote it"
        )
    if checkpoint["style_sha256"] != style_sha256:
        raise StylizeError(f"cannot resume from {path}: it was trained on another style image")
    if checkpoint["data"]["fingerprint"] != data.fingerprint:
        raise StylizeError(
            f"cannot resume from {path}: the files in {data.folder} changed since "
            f"({checkpoint['data']['image_count']} images then, {len(data.images)} now)"
        )
    if checkpoint["step"] > steps:
        raise StylizeError(
            f"cannot resume from {path}: it is at step {checkpoint['step']}, past the "
            f"{steps} steps asked for; ask for more steps"
        )


@dataclass(frozen=True)
class TrainResult:
    """The outcome of `run_training`. `tensors` and `meta` (for the store) are empty on
    processes other than the main one."""

    step: int
    interrupted: bool
    losses: dict[str, float]
    unreadable: tuple[str, ...]
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def run_training(
    plan: TrainingPlan,
    vgg_weights: Mapping[str, Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
    workers: int = 0,
    checkpoint_every: int = 1000,
    preview_every: int = 1000,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Trains up to `plan.total_steps`, writing checkpoints, previews and the loss log into the
    work folder (main process only), and returns the trained weights.

    `on_progress(step, total_steps, **values)` follows every step, with `content`, `style`,
    `tv` (weighted losses), `loss` (their sum), `images_per_second` and `unreadable` (files
    skipped so far). The first Ctrl-C (SIGINT) stops after the current step and saves a
    checkpoint; the result then says `interrupted`."""
    if workers < 0:
        raise StylizeError(f"--workers must be 0 or more, got {workers}")
    if checkpoint_every < 1 or preview_every < 1:
        raise StylizeError("--checkpoint-every and --preview-every must be at least 1")
    distributed = plan.processes.world_size > 1
    if plan.device.type == "cuda" and plan.device.index is not None:
        # NCCL and the loader's pinned memory work on the current GPU.
        torch.cuda.set_device(plan.device)
    if distributed:
        dist.init_process_group("nccl" if plan.device.type == "cuda" else "gloo")
    try:
        with _stop_requests() as stop_requested:
            return _Trainer(plan, vgg_weights, autocast_dtype).train(
                workers=workers,
                checkpoint_every=checkpoint_every,
                preview_every=preview_every,
                stop_requested=stop_requested,
                on_progress=on_progress,
            )
    finally:
        if distributed:
            dist.destroy_process_group()


class _Trainer:
    def __init__(
        self,
        plan: TrainingPlan,
        vgg_weights: Mapping[str, Tensor],
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.plan = plan
        self.settings = settings = plan.settings
        self.device = device = plan.device
        self.autocast_dtype = autocast_dtype
        if device.type == "cuda":
            # Every batch has the same shape, so autotuning pays off from the second step.
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(settings.seed)
        self.memory_format = (
            torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        )
        self.net = TransformerNet(settings.architecture).to(
            device=device, memory_format=self.memory_format
        )
        # The content targets need only the content layers, often shallower than the style's.
        self.vgg = VGGFeatures(vgg_weights, settings.content_layers + settings.style_layers).to(
            device
        )
        self.content_vgg = VGGFeatures(vgg_weights, settings.content_layers).to(device)
        self.style_grams = self._style_grams()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate)
        # Gradients of float16 losses underflow without scaling; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
        self.step = 0
        self.position = 0
        self.losses = dict.fromkeys(_LOSS_NAMES, math.nan)
        if plan.checkpoint is not None:
            self._restore(plan.checkpoint)
        self.model: nn.Module = self.net
        if plan.processes.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None
            )

    def _autocast(self) -> AbstractContextManager[object]:
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _style_grams(self) -> dict[str, Tensor]:
        style = to_tensor(self.plan.style, self.device)
        with torch.no_grad():
            features = self.vgg(style)
            return {name: gram_matrix(features[name]) for name in self.settings.style_layers}

    def _restore(self, checkpoint: Mapping[str, Any]) -> None:
        try:
            self.net.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise StylizeError(f"cannot resume from {self.plan.checkpoint_path}: {error}") from None
        random_states = checkpoint.get("rng", {})
        if "torch" in random_states:
            torch.set_rng_state(random_states["torch"])
        cuda_states = random_states.get("cuda", [])
        if self.device.type == "cuda" and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        self.step = int(checkpoint["step"])
        self.position = int(checkpoint["position"])
        self.losses = {name: float(value) for name, value in checkpoint.get("losses", {}).items()}

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
        with _LossLog(plan.workdir / LOSS_LOG_FILE, self.step, enabled=main) as log:
            rate = _Rate(samples_per_step)
            for pixels, skipped in self._loader(workers):
                self.losses, interrupted = self._step(pixels, stop_requested)
                self.step += 1
                self.position += samples_per_step
                unreadable.update(dict.fromkeys(skipped))
                if not all(math.isfinite(value) for value in self.losses.values()):
                    raise StylizeError(
                        f"the loss became {self.losses['loss']} at step {self.step}; the last "
                        f"checkpoint is in {plan.workdir}. Try a smaller --lr or --precision fp32"
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
                if main and (finished or interrupted or self.step % checkpoint_every == 0):
                    self._save_checkpoint()
                if interrupted:
                    break
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
        )

    def _loader(self, workers: int) -> DataLoader:
        plan = self.plan
        order = _BatchOrder(
            image_count=len(plan.data.images),
            seed=self.settings.seed,
            batch_size=self.settings.batch_size,
            processes=plan.processes,
            first_position=self.position,
            steps=plan.total_steps - self.step,
        )
        return DataLoader(
            _CropDataset(plan.data.images, self.settings.image_size, self.settings.seed),
            batch_sampler=order,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_interrupts,
        )

    def _step(
        self, pixels: Tensor, stop_requested: Callable[[], bool]
    ) -> tuple[dict[str, float], bool]:
        """One optimizer step on a uint8 batch; returns the weighted losses (averaged over the
        processes) and whether any process was asked to stop."""
        settings = self.settings
        content_image = pixels.to(self.device, non_blocking=True).float()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            stylized = self.model(content_image) / 255
            with torch.no_grad():
                targets = self.content_vgg(content_image / 255)
            features = self.vgg(stylized)
        content = sum(
            content_loss(features[name], targets[name]) for name in settings.content_layers
        ) / len(settings.content_layers)
        style = sum(
            style_loss(features[name], self.style_grams[name]) for name in settings.style_layers
        ) / len(settings.style_layers)
        terms = torch.stack(
            [
                settings.content_weight * content,
                settings.style_weight * style,
                settings.tv_weight * total_variation_loss(stylized),
            ]
        )
        total = terms.sum()
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        report = torch.cat([terms.detach(), total.detach().view(1)])
        stop = stop_requested()
        if self.plan.processes.world_size > 1:
            shared = torch.cat([report, report.new_tensor([float(stop)])])
            dist.all_reduce(shared)
            report = shared[:4] / self.plan.processes.world_size
            stop = bool(shared[4] > 0)
        return dict(zip(_LOSS_NAMES, report.tolist(), strict=True)), stop

    def _write_previews(self) -> None:
        if not self.plan.previews:
            return
        folder = self.plan.workdir / PREVIEW_FOLDER
        folder.mkdir(exist_ok=True)
        self.net.eval()
        try:
            for stem, image in self.plan.previews:
                content = to_tensor(image, self.device).contiguous(memory_format=self.memory_format)
                with torch.no_grad(), self._autocast():
                    stylized = self.net(content * 255)
                save_image(
                    to_image(stylized.float() / 255),
                    folder / f"{stem}-{self.step:06d}.jpg",
                    overwrite=True,
                )
        finally:
            self.net.train()

    def _save_checkpoint(self) -> None:
        plan = self.plan
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "position": self.position,
            "settings": self.settings.to_dict(),
            "style_sha256": plan.style_sha256,
            "data": {"image_count": len(plan.data.images), "fingerprint": plan.data.fingerprint},
            "model": {
                name: tensor.detach().cpu() for name, tensor in self.net.state_dict().items()
            },
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
            "losses": dict(self.losses),
        }
        path = plan.checkpoint_path
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            torch.save(state, temporary)
            os.replace(temporary, path)
        except OSError as error:
            raise StylizeError(
                f"cannot write checkpoint {path}: {error.strerror or error}"
            ) from None
        finally:
            temporary.unlink(missing_ok=True)

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
                "precision": str(self.autocast_dtype or torch.float32).removeprefix("torch."),
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


def epoch_order(seed: int, epoch: int, image_count: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the images."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(image_count)


class _BatchOrder(Sampler[list[tuple[int, int]]]):
    """This process's share of each step's samples, as (image index, stream position), for
    `steps` steps from `first_position` on."""

    def __init__(
        self,
        *,
        image_count: int,
        seed: int,
        batch_size: int,
        processes: Processes,
        first_position: int,
        steps: int,
    ) -> None:
        self.image_count = image_count
        self.seed = seed
        self.batch_size = batch_size
        self.processes = processes
        self.first_position = first_position
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        samples_per_step = self.batch_size * self.processes.world_size
        epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.steps):
            start = (
                self.first_position
                + step * samples_per_step
                + self.processes.rank * self.batch_size
            )
            batch = []
            for position in range(start, start + self.batch_size):
                position_epoch, offset = divmod(position, self.image_count)
                if position_epoch != epoch:
                    epoch = position_epoch
                    order = epoch_order(self.seed, epoch, self.image_count)
                batch.append((int(order[offset]), position))
            yield batch


class _CropDataset(Dataset):
    """Square crops of the full short edge at a random place, resized to `size`, as uint8
    (H, W, 3). An unreadable file is replaced by the next readable one and reported."""

    def __init__(self, images: Sequence[Path], size: int, seed: int) -> None:
        self.images = list(images)
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, sample: tuple[int, int]) -> tuple[Tensor, list[str]]:
        index, position = sample
        unreadable: list[str] = []
        for attempt in range(len(self.images)):
            path = self.images[(index + attempt) % len(self.images)]
            try:
                image = load_image(path).rgb
            except (StylizeError, OSError) as error:
                unreadable.append(str(error))
                continue
            random = np.random.default_rng([self.seed, _CROP_STREAM, position])
            return self._crop(image, random), unreadable
        raise StylizeError("none of the training images can be read any more")

    def _crop(self, image: Image.Image, random: np.random.Generator) -> Tensor:
        width, height = image.size
        side = min(width, height)
        left = int(random.integers(0, width - side + 1))
        top = int(random.integers(0, height - side + 1))
        crop = image.resize(
            (self.size, self.size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + side, top + side),
        )
        return torch.from_numpy(np.array(crop, dtype=np.uint8))


def _collate(samples: Sequence[tuple[Tensor, list[str]]]) -> tuple[Tensor, list[str]]:
    # (N, H, W, 3) seen as (N, 3, H, W) is a channels-last batch, the networks' preferred layout.
    pixels = torch.stack([pixels for pixels, _ in samples]).permute(0, 3, 1, 2)
    return pixels, [message for _, messages in samples for message in messages]


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process should act on it, and it
    # still needs its loader workers to finish the current step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _stop_requests() -> Iterator[Callable[[], bool]]:
    """Turns Ctrl-C (SIGINT) into a request to stop after the current step.

    Further SIGINTs are ignored too: torchrun forwards the one it receives to processes that
    already got the terminal's, and stopping halfway through an optimizer step would leave a
    half-updated model to save."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def request_stop(signal_number: int, frame: object) -> None:
        requested.set()

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


class _LossLog:
    """losses.csv in the work folder, one row per step. On resume, rows past the checkpoint
    (from steps that were trained but not saved) are dropped first."""

    def __init__(self, path: Path, resume_step: int, *, enabled: bool) -> None:
        self.path = path
        self.resume_step = resume_step
        self.enabled = enabled
        self._file: io.TextIOWrapper | None = None
        self._writer: Any = None

    def __enter__(self) -> _LossLog:
        if not self.enabled:
            return self
        kept: list[dict[str, str]] = []
        if self.resume_step and self.path.exists():
            with self.path.open(newline="") as file:
                kept = [
                    row
                    for row in csv.DictReader(file)
                    if row.get("step", "").isdigit() and int(row["step"]) <= self.resume_step
                ]
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with temporary.open("w", newline="") as file:
                writer = csv.DictWriter(file, LOSS_LOG_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
            os.replace(temporary, self.path)
            self._file = self.path.open("a", newline="")
        except OSError as error:
            raise StylizeError(f"cannot write {self.path}: {error.strerror or error}") from None
        finally:
            temporary.unlink(missing_ok=True)
        self._writer = csv.DictWriter(self._file, LOSS_LOG_COLUMNS)
        return self

    def write(self, **row: float) -> None:
        if self._file is None:
            return
        self._writer.writerow(
            {
                name: f"{value:.6g}" if isinstance(value, float) else value
                for name, value in row.items()
            }
        )
        self._file.flush()

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()


def _thumbnail(image: Image.Image) -> str:
    """A small JPEG of the style image as a data URL (a few KB), for model listings."""
    if max(image.size) > THUMBNAIL_LONG_EDGE:
        image = resize_long_edge(image, THUMBNAIL_LONG_EDGE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
