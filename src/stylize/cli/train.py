"""`stylize train`: train a fast style model from an artwork and a folder of photos."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.cli import _console
from stylize.cli._options import (
    Precision,
    add_device,
    add_precision,
    add_quiet,
    model_name,
    parse_layers,
    settings_usage_errors,
)
from stylize.engine.settings import DEFAULT_STEPS, TrainSchedule, TrainSettings

if TYPE_CHECKING:
    from torch import Tensor

    from stylize.engine.training import TrainResult

# Defaults and checks are TrainSettings' and TrainSchedule's: the options take their defaults
# from them, and their validate() reports a value out of range as a usage error of the option.
_SETTINGS = TrainSettings()
_SCHEDULE = TrainSchedule()
DEFAULT_CONTENT_LAYERS = ",".join(_SETTINGS.content_layers)
DEFAULT_STYLE_LAYERS = ",".join(_SETTINGS.style_layers)
EXIT_INTERRUPTED = 130
PROGRESS_FIELDS = (
    "loss {loss:.3g} (content {content:.3g}, style {style:.3g}, tv {tv:.3g}) "
    "{images_per_second:.1f} img/s"
)
_DESCRIPTION = "Train a fast style model from an artwork and a folder of photos."


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="Train a fast style model from an artwork and a photo folder.",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "--style",
        "-s",
        type=Path,
        required=True,
        metavar="IMAGE",
        help="The artwork whose style to learn.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="Folder of training photos, searched recursively (for example COCO train2014).",
    )
    parser.add_argument(
        "--name",
        type=model_name,
        metavar="NAME",
        help="Name of the model in the store (default: from the style image's file name).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=_SCHEDULE.steps,
        metavar="N",
        help=f"Training steps, one batch each (default: {DEFAULT_STEPS:,} unless --epochs).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=_SCHEDULE.epochs,
        metavar="N",
        help="Passes over the data set, instead of --steps.",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=_SETTINGS.batch_size,
        metavar="N",
        help="Images per step (per process).",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=_SETTINGS.learning_rate,
        metavar="X",
        help="Adam learning rate.",
    )
    parser.add_argument(
        "--content-weight",
        type=float,
        default=_SETTINGS.content_weight,
        metavar="X",
        help="Weight of the content loss.",
    )
    parser.add_argument(
        "--style-weight",
        type=float,
        default=_SETTINGS.style_weight,
        metavar="X",
        help="Weight of the style loss.",
    )
    parser.add_argument(
        "--tv-weight",
        type=float,
        default=_SETTINGS.tv_weight,
        metavar="X",
        help="Weight of the total variation (smoothness) loss.",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=_SETTINGS.image_size,
        metavar="N",
        help="Side of the square training crops, in pixels.",
    )
    parser.add_argument(
        "--style-size",
        type=int,
        default=_SETTINGS.style_size,
        metavar="N",
        help="Long edge the style image is scaled to; larger, finer strokes.",
    )
    parser.add_argument(
        "--content-layers",
        default=DEFAULT_CONTENT_LAYERS,
        metavar="LAYERS",
        help="VGG19 layers for the content loss.",
    )
    parser.add_argument(
        "--style-layers",
        default=DEFAULT_STYLE_LAYERS,
        metavar="LAYERS",
        help="VGG19 layers for the style loss.",
    )
    parser.add_argument(
        "--preview",
        action="append",
        type=Path,
        metavar="IMAGE",
        help="Image to stylize into the work folder every --preview-every steps (repeatable).",
    )
    parser.add_argument(
        "--preview-every",
        type=int,
        default=_SCHEDULE.preview_every,
        metavar="N",
        help="Steps between previews.",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=_SCHEDULE.checkpoint_every,
        metavar="N",
        help="Steps between checkpoints.",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="FOLDER",
        help="Folder for checkpoints, previews and the loss log "
        "(default: train/NAME in the store's cache folder).",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Continue from the work folder's checkpoint (also to add steps).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an installed model of the same name.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_SCHEDULE.workers,
        metavar="N",
        help="Data loading processes (0: load in-line).",
    )
    add_device(parser)
    add_precision(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=_SETTINGS.seed,
        metavar="N",
        help="Seed for the initial weights and the data order.",
    )
    add_quiet(parser)
    parser.set_defaults(run=train)


def train(
    *,
    style: Path,
    data: Path,
    name: str | None = None,
    steps: int | None = _SCHEDULE.steps,
    epochs: int | None = _SCHEDULE.epochs,
    batch_size: int = _SETTINGS.batch_size,
    lr: float = _SETTINGS.learning_rate,
    content_weight: float = _SETTINGS.content_weight,
    style_weight: float = _SETTINGS.style_weight,
    tv_weight: float = _SETTINGS.tv_weight,
    image_size: int = _SETTINGS.image_size,
    style_size: int = _SETTINGS.style_size,
    content_layers: str = DEFAULT_CONTENT_LAYERS,
    style_layers: str = DEFAULT_STYLE_LAYERS,
    preview: list[Path] | None = None,
    preview_every: int = _SCHEDULE.preview_every,
    checkpoint_every: int = _SCHEDULE.checkpoint_every,
    workdir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    workers: int = _SCHEDULE.workers,
    device: str = "auto",
    precision: Precision = Precision.auto,
    seed: int = _SETTINGS.seed,
    quiet: bool = False,
) -> None:
    """Train a fast style model from an artwork and a folder of photos."""
    from stylize.engine import training
    from stylize.engine.imageio import load_image
    from stylize.engine.runtime import Runtime
    from stylize.errors import StylizeError
    from stylize.store.paths import cache_dir
    from stylize.store.registry import check_install_name

    with settings_usage_errors():
        TrainSchedule(
            steps=steps,
            epochs=epochs,
            checkpoint_every=checkpoint_every,
            preview_every=preview_every,
            workers=workers,
        ).validate()
        settings = TrainSettings(
            image_size=image_size,
            batch_size=batch_size,
            learning_rate=lr,
            content_weight=content_weight,
            style_weight=style_weight,
            tv_weight=tv_weight,
            style_size=style_size,
            content_layers=parse_layers(content_layers),
            style_layers=parse_layers(style_layers),
            seed=seed,
        )
    if steps is None and epochs is None:
        steps = DEFAULT_STEPS
    # The files first: a bad style image explains more than the name it would give.
    load_image(style)
    if data.exists() and not data.is_dir():
        raise StylizeError(f"--data {data} is a file, not a folder of training photos")
    name = name or _default_name(style)
    processes = training.Processes.from_environment()
    if processes.is_main:
        check_install_name(name, "style", source="trained", overwrite=overwrite)
    plan = training.prepare_training(
        style_image=style,
        data_folder=data,
        workdir=workdir or cache_dir() / "train" / name,
        settings=settings,
        runtime=Runtime.create(device, precision.value),
        steps=steps,
        epochs=epochs,
        resume=resume,
        previews=preview or (),
    )
    quiet = quiet or not processes.is_main
    if len(plan.data.images) < training.FEW_IMAGES and processes.is_main:
        _console.warn(
            f"{data} has only {len(plan.data.images)} images; a model that works on any photo "
            f"needs thousands (COCO train2014 has 83k, see docs/train.md)"
        )
    _console.info(
        f"training {name!r} on {len(plan.data.images)} images for {plan.total_steps} steps "
        f"(from step {plan.start_step}) on {plan.device}; work folder {plan.workdir}",
        quiet,
    )
    vgg_weights = _vgg19_weights(quiet)
    with _console.progress(
        "training", plan.total_steps, quiet, PROGRESS_FIELDS, start=plan.start_step
    ) as update:
        result = training.run_training(
            plan,
            vgg_weights,
            workers=workers,
            checkpoint_every=checkpoint_every,
            preview_every=preview_every,
            on_progress=update,
            on_warning=_console.warn,
        )
    if not processes.is_main:
        # The first process reports and installs the model.
        if result.interrupted:
            raise SystemExit(EXIT_INTERRUPTED)
        return
    if result.unreadable:
        _console.warn(
            f"skipped {len(result.unreadable)} unreadable file(s), for example: "
            f"{result.unreadable[0]}"
        )
    if result.interrupted:
        # Shown even with -q: it is where the work went and how to continue it.
        if result.checkpoint_problem is None:
            _console.info(
                f"interrupted at step {result.step}; checkpoint saved in {plan.workdir}; run "
                "the same command with --resume to continue"
            )
        else:
            _console.warn(
                f"interrupted at step {result.step}, but its checkpoint could not be written "
                f"({result.checkpoint_problem}); "
                + training.resume_advice(plan.workdir, result.checkpoint_step)
            )
        raise SystemExit(EXIT_INTERRUPTED)
    path = _install(name, result, plan.workdir, overwrite)
    if result.checkpoint_problem is not None:
        # The model is safe in the store: the work folder's trouble only costs a later --resume.
        _console.warn(
            f"the final checkpoint could not be written in {plan.workdir} "
            f"({result.checkpoint_problem}); the model was installed anyway"
        )
    _console.result(str(path))


def _install(name: str, result: TrainResult, workdir: Path, overwrite: bool) -> Path:
    """Installs the trained model; a failure (the store's disk full, say) is one line that says
    where the trained weights still are."""
    from stylize.engine import training
    from stylize.errors import StylizeError
    from stylize.store.paths import models_dir
    from stylize.store.registry import install_model

    try:
        return install_model(name, result.tensors, result.meta, overwrite=overwrite)
    except Exception as error:
        if isinstance(error, StylizeError):
            problem = str(error)  # the store's own words ("cannot install NAME: ...")
        elif training.disk_full_reason(error) is not None:
            problem = f"cannot install {name}: {training.disk_full_reason(error)} in {models_dir()}"
        else:
            problem = f"cannot install {name}: {training.failure_reason(error)}"
        if result.checkpoint_problem is None:
            where = (
                f"the trained model is in the checkpoint of step {result.step} in {workdir}: "
                "run the same command with --resume to install it"
            )
        else:
            where = (
                "its final checkpoint could not be written either "
                f"({result.checkpoint_problem}); "
                + training.resume_advice(workdir, result.checkpoint_step)
            )
        raise StylizeError(f"{problem}; {where}") from error


def _default_name(style: Path) -> str:
    from stylize.errors import StylizeError
    from stylize.store.registry import validate_name

    name = re.sub(r"[^a-z0-9_-]+", "-", style.stem.lower()).strip("-_")[:64]
    if not name:
        raise StylizeError(f"cannot make a model name from {style.name}; pass --name")
    return validate_name(name)


def _vgg19_weights(quiet: bool) -> dict[str, Tensor]:
    from stylize.store.registry import load_vgg19_weights

    with _console.download_progress("downloading vgg19", quiet) as update:
        return load_vgg19_weights(update, on_warning=_console.warn)
