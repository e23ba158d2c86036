"""`stylize optimize`: stylize one image by optimizing its pixels (Gatys et al.)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from stylize.cli import _console
from stylize.cli._options import (
    Precision,
    add_device,
    add_precision,
    add_quiet,
    add_style_blend,
    not_stdout,
    parse_layers,
    parse_weights,
    settings_usage_errors,
)
from stylize.cli._parser import Range, UsageError, choice
from stylize.engine.settings import OPTIMIZERS, POOLINGS, GatysSettings
from stylize.errors import StylizeError

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

    from stylize.engine.gatys import GatysTransfer

INTERRUPTED_EXIT_CODE = 130
_INIT_KEYWORDS = ("content", "noise", "style")
# Defaults and checks are GatysSettings': the options take their defaults from it, and its
# validate() reports a value out of range as a usage error of the option.
_DEFAULTS = GatysSettings()
# The choices of --optimizer and --pooling.
Optimizer = Enum("Optimizer", [(name, name) for name in OPTIMIZERS], type=str)  # type: ignore[misc]
Pooling = Enum("Pooling", [(name, name) for name in POOLINGS], type=str)  # type: ignore[misc]
_DESCRIPTION = "Optimize an image so it keeps CONTENT's subject in the style of STYLE."


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "optimize",
        help="Stylize one image by optimizing its pixels (Gatys et al.).",
        description=_DESCRIPTION,
    )
    parser.add_argument("content", type=Path, metavar="CONTENT", help="The photo to stylize.")
    parser.add_argument(
        "styles",
        nargs="+",
        type=Path,
        metavar="STYLE",
        help="One or more style images (artworks).",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=not_stdout,
        required=True,
        metavar="PATH",
        help="Where to write the result (.png, .jpg, .webp, .tif).",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=_DEFAULTS.size,
        metavar="N",
        help="Long edge of the output in pixels.",
    )
    parser.add_argument(
        "--style-scale",
        type=float,
        default=_DEFAULTS.style_scale,
        metavar="X",
        help="Size of the style images relative to the output.",
    )
    add_style_blend(parser)
    parser.add_argument(
        "--iterations",
        type=int,
        default=_DEFAULTS.iterations,
        metavar="N",
        help="Iterations in total, over all scales.",
    )
    parser.add_argument(
        "--optimizer",
        type=choice(Optimizer),
        default=Optimizer(_DEFAULTS.optimizer),
        help="L-BFGS or Adam.",
    )
    parser.add_argument(
        "--lr",
        type=float,
        metavar="X",
        help=f"Adam's step size in pixel values (0-1); {_DEFAULTS.lr} if not given.",
    )
    parser.add_argument(
        "--content-weight",
        type=float,
        default=_DEFAULTS.content_weight,
        metavar="X",
        help="Weight of the content loss.",
    )
    parser.add_argument(
        "--style-weight",
        type=float,
        default=_DEFAULTS.style_weight,
        metavar="X",
        help="Weight of the style loss.",
    )
    parser.add_argument(
        "--tv-weight",
        type=float,
        default=_DEFAULTS.tv_weight,
        metavar="X",
        help="Weight of the smoothness (total variation) loss.",
    )
    parser.add_argument(
        "--content-layers",
        default=",".join(_DEFAULTS.content_layers),
        metavar="LAYERS",
        help="VGG19 layers that carry the content, comma-separated.",
    )
    parser.add_argument(
        "--style-layers",
        default=",".join(_DEFAULTS.style_layers),
        metavar="LAYERS",
        help="VGG19 layers that carry the style, comma-separated.",
    )
    parser.add_argument(
        "--pooling",
        type=choice(Pooling),
        default=Pooling(_DEFAULTS.pooling),
        help="VGG19 pooling: max or avg.",
    )
    parser.add_argument(
        "--init",
        default=_DEFAULTS.init,
        metavar="FROM",
        help="Start from: content, noise, style, or an image file.",
    )
    parser.add_argument(
        "--scales",
        type=int,
        default=_DEFAULTS.scales,
        metavar="N",
        help="Coarse-to-fine scales, each twice the size of the one before "
        "(default: enough to start near 256 px).",
    )
    parser.add_argument(
        "--preserve-color", action="store_true", help="Keep the content photo's colors."
    )
    parser.add_argument(
        "--save-every",
        type=Range(int, 1),
        metavar="N",
        help="Also write the image every N iterations, as OUT-STEM.NNNN.SUFFIX.",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        metavar="PATH",
        help="Write the losses of every iteration to this file, as JSON lines.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        metavar="N",
        help="Random seed (for --init noise).",
    )
    add_device(parser)
    add_precision(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace OUT and other outputs if they exist.",
    )
    add_quiet(parser)
    parser.set_defaults(run=optimize)


def optimize(
    *,
    content: Path,
    styles: list[Path],
    output: Path,
    size: int = _DEFAULTS.size,
    style_scale: float = _DEFAULTS.style_scale,
    style_blend: str | None = None,
    iterations: int = _DEFAULTS.iterations,
    optimizer: Optimizer = Optimizer(_DEFAULTS.optimizer),
    lr: float | None = None,
    content_weight: float = _DEFAULTS.content_weight,
    style_weight: float = _DEFAULTS.style_weight,
    tv_weight: float = _DEFAULTS.tv_weight,
    content_layers: str = ",".join(_DEFAULTS.content_layers),
    style_layers: str = ",".join(_DEFAULTS.style_layers),
    pooling: Pooling = Pooling(_DEFAULTS.pooling),
    init: str = _DEFAULTS.init,
    scales: int | None = _DEFAULTS.scales,
    preserve_color: bool = _DEFAULTS.preserve_color,
    save_every: int | None = None,
    trace: Path | None = None,
    seed: int | None = _DEFAULTS.seed,
    device: str = "auto",
    precision: Precision = Precision.auto,
    overwrite: bool = False,
    quiet: bool = False,
) -> None:
    """Optimize an image so it keeps CONTENT's subject in the style of STYLE."""
    from stylize.engine import imageio
    from stylize.engine.gatys import GatysTransfer
    from stylize.engine.runtime import Runtime

    if lr is not None and optimizer.value != "adam":
        raise UsageError("only --optimizer adam takes a step size", "'--lr'")
    settings = GatysSettings(
        size=size,
        style_scale=style_scale,
        style_blend=parse_weights(style_blend),
        iterations=iterations,
        optimizer=optimizer.value,
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        content_layers=parse_layers(content_layers),
        style_layers=parse_layers(style_layers),
        pooling=pooling.value,
        init=init if init in _INIT_KEYWORDS else "image",
        scales=scales,
        preserve_color=preserve_color,
        seed=seed,
        lr=_DEFAULTS.lr if lr is None else lr,
    )
    with settings_usage_errors():
        settings.validate(style_count=len(styles))
    init_path = None if init in _INIT_KEYWORDS else Path(init)
    snapshot_every = save_every or 0
    snapshots = _snapshot_paths(output, iterations, snapshot_every)
    _refuse_collisions(
        output, trace, snapshots, inputs=[content, *styles, *([init_path] if init_path else [])]
    )
    with _Interrupts() as interrupts:
        try:
            content_image = imageio.load_image(content)
            style_images = [imageio.load_image(path).rgb for path in styles]
            init_image = None if init_path is None else _load_init(init_path)
            imageio.check_output_path(output, overwrite=overwrite)
            _check_snapshot_paths(snapshots, overwrite)
            runtime = Runtime.create(device, precision.value)
            transfer = GatysTransfer(
                content_image.rgb, style_images, settings, runtime=runtime, init_image=init_image
            )

            def save(image: Tensor, path: Path) -> Path:
                return imageio.save_image(
                    imageio.to_image(image), path, alpha=content_image.alpha, overwrite=overwrite
                )

            with ExitStack() as stack:
                trace_file = stack.enter_context(_open_trace(trace, overwrite)) if trace else None
                report = stack.enter_context(_Report(quiet, trace_file))
                width, height = transfer.sizes[-1]
                _console.info(
                    f"optimizing {width}x{height} in {len(transfer.sizes)} scale(s) on "
                    f"{runtime.device} ({runtime.precision_name})",
                    quiet,
                )
                try:
                    image = _run(
                        transfer,
                        report,
                        quiet,
                        snapshot_every,
                        lambda iteration, image: save(image, _snapshot_path(output, iteration)),
                    )
                    interrupts.saving()
                except KeyboardInterrupt:
                    # Also when it came just as the run ended: the image so far is the result.
                    report.close()
                    partial = transfer.current_image()
                    if partial is None:
                        interrupts.done()
                        raise
                    image = partial
                    _console.warn("interrupted: saving the image so far")
            written = save(image, output)
            interrupts.done()
        except KeyboardInterrupt:
            _console.warn("interrupted before the optimization started; nothing was saved")
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        except _SaveAbandoned:
            _console.warn("interrupted again: the image was not saved")
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    _console.result(str(written))
    if interrupts.interrupted:
        raise SystemExit(INTERRUPTED_EXIT_CODE)


def _run(
    transfer: GatysTransfer,
    report: _Report,
    quiet: bool,
    snapshot_every: int,
    on_snapshot: Callable[[int, Tensor], object],
) -> Tensor:
    from stylize.store.registry import load_vgg19_weights

    with _console.download_progress("downloading vgg19", quiet) as on_download:
        weights = load_vgg19_weights(on_download, on_warning=_console.warn)
    # Running out of memory is a StylizeError of the transfer, which names the size that failed.
    return transfer.run(weights, report, on_snapshot=on_snapshot, snapshot_every=snapshot_every)


class _SaveAbandoned(BaseException):
    """A third Ctrl-C: quit without waiting for the image to be saved."""


class _Interrupts:
    """What Ctrl-C (SIGINT) does while optimize works.

    The first one stops the optimization: it raises KeyboardInterrupt, as Python's own handler
    would, and the image so far is saved. Once the image is being saved (the image so far, or
    the result of a run that has just ended), a Ctrl-C only says so and the save goes on; the
    one after that abandons the save (`_SaveAbandoned`; the atomic write leaves no file behind).
    After an interrupted command SIGINT stays ignored until the process has exited, so no
    Ctrl-C can break into Python's shutdown (an atexit callback) with a traceback. Outside the
    main thread signals cannot be handled, and Python's default stays."""

    def __init__(self) -> None:
        self.interrupted = False
        self._phase = "running"  # then "saving", then "done"
        self._warned = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._installed:
            return
        # Interrupted, the process is on its way out: nothing may interrupt that.
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.interrupted else self._previous)

    def saving(self) -> None:
        """The optimization is over: a Ctrl-C no longer stops it, it waits for the save."""
        if self._phase == "running":
            self._phase = "saving"

    def done(self) -> None:
        """The image is written: a Ctrl-C changes nothing any more."""
        self._phase = "done"

    def _handle(self, number: int, frame: object) -> None:
        first = not self.interrupted
        self.interrupted = True
        if self._phase == "running" and first:
            self._phase = "saving"
            raise KeyboardInterrupt
        if self._phase == "done":
            return
        if not self._warned:
            self._warned = True
            # Straight to the file descriptor: the handler may run in the middle of anything,
            # Rich's own printing (or its lazy imports) included, which must not be re-entered.
            with contextlib.suppress(OSError):
                os.write(2, b"warning: saving the image; press Ctrl-C again to quit without it\n")
            return
        raise _SaveAbandoned


class _Report:
    """Shows a progress bar per scale and writes the --trace lines."""

    def __init__(self, quiet: bool, trace_file: TextIO | None) -> None:
        self._quiet = quiet
        self._trace_file = trace_file
        self._bar = ExitStack()
        self._scale: int | None = None
        self._update: Callable[..., None] | None = None

    def __enter__(self) -> _Report:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __call__(self, completed: int, total: int, **values: Any) -> None:
        if values["scale"] != self._scale:
            self.close()
            self._scale = values["scale"]
            self._update = self._bar.enter_context(
                _console.progress(
                    f"scale {values['scale']}/{values['scales']} "
                    f"{values['width']}x{values['height']}",
                    total,
                    self._quiet,
                    fields="loss {loss:.4g} (content {content:.3g}, style {style:.3g}, "
                    "tv {tv:.3g})",
                )
            )
        assert self._update is not None
        self._update(completed, total, **values)
        if self._trace_file is not None:
            record = {key: values[key] for key in _TRACE_FIELDS}
            record["total"] = values["loss"]
            record["elapsed"] = round(values["elapsed"], 4)
            self._trace_file.write(json.dumps(record) + "\n")
            self._trace_file.flush()

    def close(self) -> None:
        self._bar.close()
        self._scale = None


_TRACE_FIELDS = ("scale", "iteration", "width", "height", "content", "style", "tv")


def _load_init(path: Path) -> Image.Image:
    from stylize.engine.imageio import load_image

    if not path.exists():
        raise UsageError(
            f"'{path}' is neither {', '.join(_INIT_KEYWORDS)} nor an image file",
            "'--init'",
        )
    return load_image(path).rgb


def _snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}.{iteration:04d}{output.suffix}")


def _snapshot_paths(output: Path, iterations: int, every: int) -> list[Path]:
    if every <= 0:
        return []
    return [_snapshot_path(output, iteration) for iteration in range(every, iterations + 1, every)]


def _refuse_collisions(
    output: Path, trace: Path | None, snapshots: list[Path], inputs: list[Path]
) -> None:
    """Outputs never replace an input or each other, not even with --overwrite: a collision
    would be found only when the result is saved, after all the work."""
    read = {path.resolve(): path for path in inputs}
    written = output.resolve()
    if written in read:
        raise UsageError(f"{output} is an input; results never replace inputs", "'--output'")
    # One folder for all snapshots: resolving each of thousands of paths would be slow.
    folder = output.parent.resolve()
    snapshot_set = {folder / snapshot.name for snapshot in snapshots}
    replaced = sorted(snapshot_set & read.keys())
    if replaced:
        raise UsageError(
            f"the snapshot {replaced[0].name} would replace the input {read[replaced[0]]}; "
            "results never replace inputs",
            "'--save-every'",
        )
    if trace is None:
        return
    traced = trace.resolve()
    if traced in read:
        raise UsageError(f"{trace} is an input; results never replace inputs", "'--trace'")
    if traced == written:
        raise UsageError(f"{trace} is also the output (-o)", "'--trace'")
    if traced in snapshot_set:
        raise UsageError(f"{trace} is also a --save-every snapshot", "'--trace'")


def _check_snapshot_paths(snapshots: list[Path], overwrite: bool) -> None:
    for path in snapshots:
        if path.exists() and not overwrite:
            raise StylizeError(f"{path} already exists; pass --overwrite to replace it")


def _open_trace(path: Path, overwrite: bool) -> TextIO:
    try:
        return path.open("w" if overwrite else "x", encoding="utf-8")
    except FileExistsError:
        raise StylizeError(f"{path} already exists; pass --overwrite to replace it") from None
    except OSError as error:
        raise StylizeError(f"cannot write {path}: {error.strerror}") from None
