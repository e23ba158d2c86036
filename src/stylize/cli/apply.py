"""`stylize apply`: stylize images in one pass with a trained or downloaded style model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stylize.cli import _console
from stylize.cli._options import (
    DeviceOption,
    Precision,
    PrecisionOption,
    QuietOption,
    StyleBlendOption,
    not_stdout,
    parse_blend,
    positive_number,
)
from stylize.engine.settings import DEFAULT_STYLE_SIZE, MAX_STYLE_SIZE, MIN_STYLE_SIZE
from stylize.errors import StylizeError

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

    from stylize.engine.imageio import LoadedImage
    from stylize.engine.inference import Stylizer
    from stylize.engine.runtime import Runtime
    from stylize.engine.styling import PaintingStyle
    from stylize.store.styles import LoadedStyles

# Outputs keep the input's format; inputs in formats we cannot write produce PNG files.
_FALLBACK_SUFFIX = ".png"


@dataclass(frozen=True)
class _Job:
    source: Path
    target: Path


def apply(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...", help="Image files and/or folders of images.", show_default=False
        ),
    ],
    style: Annotated[
        list[str],
        typer.Option(
            "--style",
            "-s",
            help="A style: a model name (installed or in the catalog, downloaded on first use), "
            "a named style like starry, NETWORK:N (multistyle26:0 to :25), an image file (any "
            "picture as the style), or a model file (.safetensors, .pth, .onnx). Repeat "
            "to blend styles of one network, or several images.",
            show_default=False,
        ),
    ],
    style_blend: StyleBlendOption = None,
    style_size: Annotated[
        int,
        typer.Option(
            min=MIN_STYLE_SIZE,
            max=MAX_STYLE_SIZE,
            help="Style images are read as a centred square of this many pixels a side: "
            "smaller gives larger patterns.",
        ),
    ] = DEFAULT_STYLE_SIZE,
    output: Annotated[
        # A string, not a Path: a Path drops the trailing separator that marks `out.png/` as
        # a folder.
        str | None,
        typer.Option(
            "--output",
            "-o",
            callback=not_stdout,
            help="Output file (one input) or folder. Default: STEM.STYLE.EXT beside each input.",
            show_default=False,
        ),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also take images in subfolders.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (never an input).")
    ] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave existing outputs alone, skip them.")
    ] = False,
    max_size: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Shrink images whose long edge exceeds this many pixels (never below 16 "
            "pixels on the short edge, the least the model takes).",
            show_default=False,
        ),
    ] = None,
    scale: Annotated[
        float,
        typer.Option(
            callback=positive_number,
            help="Run the model at this size factor: below 1, larger brush strokes; above 1, "
            "finer ones. The output keeps its size.",
        ),
    ] = 1.0,
    strength: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="1 is fully stylized, 0 the original image (with a style image: 0 is the "
            "photo painted in its own style).",
        ),
    ] = 1.0,
    preserve_color: Annotated[
        bool, typer.Option("--preserve-color", help="Keep the original image's colors.")
    ] = False,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images of the same size to stylize at once (GPU).")
    ] = 1,
    tile_size: Annotated[
        int | None,
        typer.Option(
            min=64,
            help="Stylize large images in tiles of this many pixels a side, to save memory "
            "(the result is the same). Default: as large as memory allows.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Stylize images in one pass with a style network or any picture as the style, writing
    one file per input.

    Prints the path of every file it writes. An input that cannot be read is reported and
    skipped; the exit code is then 1.
    """
    if overwrite and skip_existing:
        raise typer.BadParameter("use either --overwrite or --skip-existing, not both")
    from stylize.store.styles import blend_label, parse_style

    refs = [parse_style(text) for text in style]
    weights = parse_blend(style_blend, len(refs))
    target = None if output is None else _Output(Path(output), output.endswith(("/", os.sep)))
    jobs = _plan(inputs, target, recursive, blend_label(refs))
    jobs = _check_targets(
        jobs,
        overwrite=overwrite,
        skip_existing=skip_existing,
        quiet=quiet,
        folders_created=target is not None and not target.names_a_file,
    )
    if not jobs:
        return

    from stylize.engine.runtime import Runtime
    from stylize.store.styles import load_styles

    # Style pictures are read before anything is downloaded: a bad one fails at once.
    paintings = [_read_painting(ref.image) for ref in refs if ref.image is not None]
    runtime = Runtime.create(device, precision.value)
    with _console.download_progress("downloading the style network", quiet) as on_download:
        loaded = load_styles(
            refs,
            weights,
            on_progress=on_download,
            on_warning=_console.warn,
            on_info=lambda message: _console.info(message, quiet),
        )
    stylizers = _Stylizers(loaded, paintings, runtime, tile_size, style_size, strength)
    created = _create_folders(jobs)
    runner = _Runner(
        stylizers,
        max_size=max_size,
        scale=scale,
        strength=strength,
        preserve_color=preserve_color,
        overwrite=overwrite,
        batch_size=batch_size,
    )
    try:
        with _console.progress("stylizing", len(jobs), quiet or len(jobs) == 1) as on_progress:
            for job in jobs:
                runner.add(job)
                on_progress(runner.finished)
            runner.flush()
            on_progress(runner.finished)
    finally:
        _remove_empty_folders(created)
    if runner.failed:
        raise StylizeError(f"{runner.failed} of {len(jobs)} images failed")


class _Stylizers:
    """The stylizer for each photo: one for all, except that an image style at a strength
    below 1 mixes in each photo's own style vector, so each photo gets a network of its own."""

    def __init__(
        self,
        loaded: LoadedStyles,
        paintings: list[Tensor],
        runtime: Runtime,
        tile_size: int | None,
        style_size: int,
        strength: float,
    ) -> None:
        from stylize.engine.inference import Stylizer
        from stylize.store.convert import ARBITRARY

        self.runtime, self.tile_size = runtime, tile_size
        self.painting: PaintingStyle | None = None
        if loaded.family != ARBITRARY:
            self.fixed = Stylizer(loaded.fixed_network(), runtime, tile_size=tile_size)
            return
        from stylize.engine.styling import PaintingStyle

        painting = PaintingStyle(
            loaded.predictor,
            loaded.network,
            paintings,
            loaded.mix,
            device=runtime.device,
            style_size=style_size,
        )
        self.fixed = Stylizer(painting.network_for(), runtime, tile_size=tile_size)
        if strength < 1.0:
            self.painting = painting

    @property
    def per_photo(self) -> bool:
        """Whether each photo needs a network of its own (then batches are single)."""
        return self.painting is not None

    def __call__(self, content: Tensor, strength: float) -> tuple[Stylizer, float]:
        """The stylizer for `content` and the pixel strength left for it to apply."""
        from stylize.engine.inference import Stylizer

        if self.painting is None:
            # Image styles at full strength: strength 1 leaves no pixel blending either.
            return self.fixed, strength
        net = self.painting.network_for(content, strength)
        return Stylizer(net, self.runtime, tile_size=self.tile_size), 1.0


def _read_painting(path: Path) -> Tensor:
    from stylize.engine.imageio import load_image, to_tensor

    return to_tensor(load_image(path).rgb)


def _plan(
    inputs: list[Path], destination: _Output | None, recursive: bool, label: str
) -> list[_Job]:
    """The input files and where each result goes."""
    from stylize.engine.imageio import find_images

    sources: dict[Path, tuple[Path, Path]] = {}  # resolved file: (file, its output's root)
    for item in inputs:
        if item.is_dir():
            # Results of an earlier run with this style sit beside their inputs: not inputs.
            found = [
                file
                for file in find_images(item, recursive=recursive)
                if not file.stem.endswith(f".{label}")
            ]
            if not found:
                _console.warn(f"no images in {item}")
            for file in found:
                sources.setdefault(file.resolve(), (file, item))
        elif item.is_file():
            sources.setdefault(item.resolve(), (item, item.parent))
        else:
            raise StylizeError(f"input not found: {item}")
    if not sources:
        raise StylizeError("no images to stylize")

    output = None if destination is None else destination.path
    if destination is not None and destination.names_a_file:
        if len(sources) == 1 and inputs[0].is_file():
            return [_Job(inputs[0], output)]
        raise typer.BadParameter(
            f"{output} looks like a file, but there are several inputs: give a folder",
            param_hint="'--output'",
        )
    jobs = []
    for file, root in sources.values():
        suffix = file.suffix if _writable(file.suffix) else _FALLBACK_SUFFIX
        name = f"{file.stem}.{label}{suffix}"
        if output is None:
            target = file.with_name(name)
        else:
            target = output / file.relative_to(root).with_name(name)
        jobs.append(_Job(file, target))
    return jobs


@dataclass(frozen=True)
class _Output:
    """Where `-o` points: `path`, and whether it was written with a trailing separator."""

    path: Path
    trailing_separator: bool

    @property
    def names_a_file(self) -> bool:
        """Whether `-o` names an output file rather than a folder: it has an image suffix
        (`.png`; `out.v2` is a folder), no trailing separator (`out.png/` is a folder) and is
        not an existing folder."""
        from stylize.engine.imageio import IMAGE_SUFFIXES

        suffix = self.path.suffix.lower()
        return (
            (suffix in IMAGE_SUFFIXES or _writable(suffix))
            and not self.trailing_separator
            and not self.path.is_dir()
        )


def _writable(suffix: str) -> bool:
    from stylize.engine.imageio import OUTPUT_SUFFIXES

    return suffix.lower() in OUTPUT_SUFFIXES


def _check_targets(
    jobs: list[_Job], *, overwrite: bool, skip_existing: bool, quiet: bool, folders_created: bool
) -> list[_Job]:
    """Refuses before any work what could not be written; drops skipped jobs. With
    `folders_created`, a target's missing folder is left for `_create_folders`."""
    from stylize.engine.imageio import check_output_path

    sources = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    remaining = []
    for job in jobs:
        target = job.target.resolve()
        if target in sources:
            raise typer.BadParameter(
                f"refusing to overwrite the input {job.source} with a result",
                param_hint="'--output'",
            )
        if target in seen:
            raise StylizeError(
                f"{seen[target]} and {job.source} would both be written to {job.target}"
            )
        seen[target] = job.source
        if job.target.exists() and skip_existing:
            _console.info(f"skipping {job.source}: {job.target} exists", quiet)
            continue
        if job.target.parent.exists() or not folders_created:
            check_output_path(job.target, overwrite=overwrite)
        remaining.append(job)
    return remaining


def _create_folders(jobs: list[_Job]) -> list[Path]:
    """Creates the output folders, once every check has passed, so a refused run leaves none;
    returns the folders it created, parents first, for `_remove_empty_folders`."""
    created: list[Path] = []
    for folder in sorted({job.target.parent for job in jobs}):
        missing = [folder, *folder.parents]
        missing = [each for each in reversed(missing) if not each.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _remove_empty_folders(created)
            raise StylizeError(
                f"cannot create folder {folder}: {error.strerror or error}"
            ) from None
        created += [each for each in missing if each not in created]
    return created


def _remove_empty_folders(created: list[Path]) -> None:
    """Removes the folders `_create_folders` created that nothing was written to (every input
    failed, or the run was interrupted), deepest first."""
    from contextlib import suppress

    for folder in reversed(created):
        with suppress(OSError):  # not empty: results were written there
            folder.rmdir()


class _Runner:
    """Loads, stylizes and saves images, batching consecutive ones of the same size."""

    def __init__(
        self,
        stylizers: _Stylizers,
        *,
        max_size: int | None,
        scale: float,
        strength: float,
        preserve_color: bool,
        overwrite: bool,
        batch_size: int,
    ) -> None:
        self.stylizers = stylizers
        self.max_size = max_size
        self.scale = scale
        self.strength = strength
        self.preserve_color = preserve_color
        self.overwrite = overwrite
        self.batch_size = 1 if stylizers.per_photo else batch_size
        self.batch: list[tuple[_Job, LoadedImage, Tensor]] = []
        self.finished = 0
        self.failed = 0

    def add(self, job: _Job) -> None:
        from stylize.engine.imageio import load_image, to_tensor

        try:
            image = load_image(job.source)
            rgb = image.rgb if self.max_size is None else _shrunk(image.rgb, self.max_size)
            _check_scaled_size(rgb, self.scale)
        except StylizeError as error:
            self._fail(job, error)
            return
        content = to_tensor(rgb)
        if self.batch and self.batch[0][2].shape != content.shape:
            self.flush()
        self.batch.append((job, image, content))
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        from stylize.engine.imageio import save_image, to_image

        batch, self.batch = self.batch, []
        if not batch:
            return
        try:
            contents = _cat([content for _, _, content in batch])
            stylizer, strength = self.stylizers(contents, self.strength)
            results = stylizer(
                contents, scale=self.scale, strength=strength, preserve_color=self.preserve_color
            )
        except StylizeError as error:
            for job, _, _ in batch:
                self._fail(job, error)
            return
        for (job, image, _), result in zip(batch, results, strict=True):
            try:
                save_image(
                    to_image(result), job.target, alpha=image.alpha, overwrite=self.overwrite
                )
            except StylizeError as error:
                self._fail(job, error)
                continue
            _console.result(str(job.target))
            self.finished += 1

    def _fail(self, job: _Job, error: StylizeError) -> None:
        message = str(error)
        _console.error(message if str(job.source) in message else f"{job.source}: {message}")
        self.failed += 1
        self.finished += 1


def _shrunk(image: Image.Image, max_size: int) -> Image.Image:
    """`image` with its long edge at most `max_size`, except that the short edge stays at least
    as large as the model takes (so a very wide image keeps a longer long edge)."""
    from stylize.engine.imageio import resize_long_edge
    from stylize.engine.inference import MIN_IMAGE_SIZE

    long_edge, short_edge = max(image.size), min(image.size)
    target = max(max_size, math.ceil(MIN_IMAGE_SIZE * long_edge / short_edge))
    return resize_long_edge(image, target) if target < long_edge else image


def _check_scaled_size(image: Image.Image, scale: float) -> None:
    """Refuses a --scale that would make the model's input larger than Pillow lets an image
    be: the resized copy alone would need gigabytes."""
    from PIL import Image

    width, height = (round(side * scale) for side in image.size)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise StylizeError(
            f"--scale {scale:g} would run the model on {width}x{height} pixels, more than the "
            f"{limit:,} an image may have; use a smaller --scale or --max-size"
        )


def _cat(tensors: list[Tensor]) -> Tensor:
    import torch

    return torch.cat(tensors)
