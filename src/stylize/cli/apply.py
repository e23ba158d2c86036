"""`stylize apply`: stylize images and videos in one pass with a trained or downloaded style
model (videos run in `_video_run.py`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.cli import _console
from stylize.cli._apply_run import Job as _Job
from stylize.cli._options import (
    Precision,
    add_device,
    add_json,
    add_precision,
    add_quiet,
    add_style_blend,
    parse_blend,
    positive_number,
)
from stylize.cli._parser import Range, UsageError, choice
from stylize.engine.settings import DEFAULT_STYLE_SIZE, MAX_STYLE_SIZE, MIN_STYLE_SIZE
from stylize.errors import StylizeError

if TYPE_CHECKING:
    from PIL import Image

    from stylize.engine.imageio import LoadedImage

# Outputs keep the input's format; inputs in formats we cannot write produce PNG files.
_FALLBACK_SUFFIX = ".png"
# A clip's frames, for `_images`: any number above the CPU count runs one frame per core.
_FRAMES_PER_CLIP = 64
# `-` as the input or the output: standard input or output.
_PIPE = Path("-")
# engine/temporal.DEFAULT_WEIGHT and engine/video.DEFAULT_CRF, CRF_RANGE (not imported here: they
# load NumPy, which a run loads with its first image); tests/cli/test_apply_video.py checks them.
_TEMPORAL_WEIGHT = 0.3
_CRF_HELP = (
    "Video quality (constant rate factor): lower is better and larger. Default 18 for H.264 "
    "(mp4, mov, mkv; 0 to 51), 31 for VP9 (webm; 0 to 63), a quantizer of 3 for avi (2 to 31). "
    "Ignored for GIF and images."
)


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "apply",
        help="Stylize images in one pass: a style network or any picture.",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="Image files, videos (mp4, mov, mkv, webm, avi, animated GIF) and/or folders "
        "of them; - reads one image from standard input.",
    )
    parser.add_argument(
        "--style",
        "-s",
        action="append",
        required=True,
        metavar="STYLE",
        help="A style: a model name (installed or in the catalog, downloaded on first use), "
        "a named style like starry, NETWORK:N (multistyle26:0 to :25), an image file (any "
        "picture as the style), or a model file (.safetensors, .pth, .onnx). Repeat "
        "to blend styles of one network, or several images.",
    )
    add_style_blend(parser)
    parser.add_argument(
        "--style-size",
        type=Range(int, MIN_STYLE_SIZE, MAX_STYLE_SIZE),
        default=DEFAULT_STYLE_SIZE,
        metavar="N",
        help="Style images are read as a centred square of this many pixels a side: "
        "smaller gives larger patterns.",
    )
    parser.add_argument(
        "--output",
        "-o",
        # A string, not a Path: a Path drops the trailing separator that marks `out.png/` as a
        # folder.
        metavar="PATH",
        help="Output file (one input) or folder; - writes the image to standard output. "
        "Default: STEM.STYLE.EXT beside each input (standard output for standard input).",
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        type=choice(ImageFormat),
        help="Format of the image results that -o does not name: png for standard output, "
        "the input's own format otherwise (videos keep their container).",
    )
    parser.add_argument(
        "--recursive",
        "-r",
        action="store_true",
        help="Also take images and videos in subfolders.",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace existing outputs (never an input)."
    )
    parser.add_argument(
        "--skip-existing", action="store_true", help="Leave existing outputs alone, skip them."
    )
    parser.add_argument(
        "--max-size",
        type=Range(int, 16),
        metavar="N",
        help="Shrink images whose long edge exceeds this many pixels (never below 16 pixels on "
        "the short edge, the least the model takes).",
    )
    parser.add_argument(
        "--scale",
        type=positive_number,
        default=1.0,
        metavar="X",
        help="Run the model at this size factor: below 1, larger brush strokes; above 1, finer "
        "ones. The output keeps its size.",
    )
    parser.add_argument(
        "--strength",
        type=Range(float, 0.0, 1.0),
        default=1.0,
        metavar="X",
        help="1 is fully stylized, 0 the original image (with a style image: 0 is the photo "
        "painted in its own style).",
    )
    parser.add_argument(
        "--preserve-color", action="store_true", help="Keep the original image's colors."
    )
    add_device(parser)
    add_precision(parser, stylizing=True)
    parser.add_argument(
        "--batch-size",
        type=Range(int, 1),
        default=1,
        metavar="N",
        help="Images of the same size to stylize at once (GPU).",
    )
    parser.add_argument(
        "--tile-size",
        type=Range(int, 64),
        metavar="N",
        help="Stylize large images in tiles of this many pixels a side, to save memory (the "
        "result is the same). Default: as large as memory allows.",
    )
    parser.add_argument(
        "--temporal-weight",
        type=Range(float, 0.0, below=1.0),
        default=_TEMPORAL_WEIGHT,
        metavar="X",
        help="Videos: how much of the previous stylized frame, carried along the motion, each "
        "frame keeps (0 to below 1): steadier texture, a little softer; 0 is plain frame by "
        "frame.",
    )
    parser.add_argument("--crf", type=int, metavar="N", help=_CRF_HELP)
    add_json(
        parser,
        "Print one JSON list for scripts at the end, an object per input (input, output, kind, "
        "status: written, failed or skipped, error), instead of the paths.",
    )
    add_quiet(parser)
    parser.set_defaults(run=apply)


_DESCRIPTION = """Stylize images and videos in one pass with a style network or any picture as
the style, writing one file per input. Prints the path of every file it writes. An input that
cannot be read is reported and skipped; the exit code is then 1."""


def apply(
    *,
    inputs: list[Path],
    style: list[str],
    style_blend: str | None = None,
    style_size: int = DEFAULT_STYLE_SIZE,
    output: str | None = None,
    image_format: ImageFormat | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    max_size: int | None = None,
    scale: float = 1.0,
    strength: float = 1.0,
    preserve_color: bool = False,
    device: str = "auto",
    precision: Precision = Precision.auto,
    batch_size: int = 1,
    tile_size: int | None = None,
    temporal_weight: float = _TEMPORAL_WEIGHT,
    crf: int | None = None,
    as_json: bool = False,
    quiet: bool = False,
) -> None:
    """Runs `stylize apply` (see _DESCRIPTION) with the parsed options."""
    if overwrite and skip_existing:
        raise UsageError("use either --overwrite or --skip-existing, not both")
    from stylize.store.styles import blend_label, parse_style

    refs = [parse_style(text) for text in style]
    weights = parse_blend(style_blend, len(refs))
    suffix = None if image_format is None else f".{image_format.value}"
    target = None if output is None else _Output(Path(output), output.endswith(("/", os.sep)))
    piped = _PIPE in inputs or (target is not None and target.path == _PIPE)
    skipped: list[_Job] = []
    if piped:
        jobs = _piped_jobs(inputs, target, blend_label(refs), suffix)
        if as_json and any(job.target == _PIPE for job in jobs):
            raise UsageError(
                "standard output carries the image: --json needs -o FILE", "'--json'"
            )
    else:
        planned = _plan(inputs, target, recursive, blend_label(refs), suffix)
        jobs = _check_targets(
            planned,
            overwrite=overwrite,
            skip_existing=skip_existing,
            quiet=quiet,
            folders_created=target is not None and not target.names_a_file,
            crf=crf,
        )
        kept = set(jobs)
        skipped = [job for job in planned if job not in kept]
    if not jobs:
        if as_json:
            _console.result(_outcomes_json([], skipped))
        return

    from stylize.cli._apply_run import INTERRUPTED_EXIT_CODE, Runner, Settings
    from stylize.cli._stylizers import make_stylizers

    stylizers = make_stylizers(
        refs,
        weights,
        device=device,
        precision=precision.value,
        tile_size=tile_size,
        style_size=style_size,
        strength=strength,
        batch_size=batch_size,
        jobs=_images(jobs),
        quiet=quiet,
        scale=scale,
    )
    created = _create_folders(jobs)
    settings = Settings(scale, strength, preserve_color, max_size)
    clips = None
    if any(job.clip for job in jobs):
        from stylize.cli._video_run import ClipOptions, ClipRunner

        options = ClipOptions(temporal_weight, crf, overwrite, quiet)
        clips = ClipRunner(stylizers, settings, options)
    runner = Runner(stylizers, settings, _read, _writer(overwrite, suffix), clips)
    runner.print_results = not as_json
    try:
        with _console.progress("stylizing", len(jobs), quiet or len(jobs) == 1) as on_progress:
            runner.run(jobs, on_progress)
    except KeyboardInterrupt:
        _console.warn(runner.interrupted_message())
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    finally:
        _remove_empty_folders(created)
    if as_json:
        _console.result(_outcomes_json(runner.outcomes, skipped))
    if runner.failed:
        if piped or (len(jobs) == 1 and jobs[0].clip):
            # A piped run has one image (a clip run, one clip), and its error is reported
            # already: one line.
            raise SystemExit(1)
        raise StylizeError(f"{runner.failed} of {len(jobs)} {_noun(jobs)} failed")


def _outcomes_json(outcomes: list[tuple[_Job, str | None]], skipped: list[_Job]) -> str:
    """The --json result: an object per input, in input order, then the skipped ones."""
    import json

    def record(job: _Job, status: str, error: str | None) -> dict[str, object]:
        return {
            "input": str(job.source),
            "output": str(job.target),
            "kind": "video" if job.clip else "image",
            "status": status,
            "error": error,
        }

    records = [record(job, "failed" if error else "written", error) for job, error in outcomes]
    records += [record(job, "skipped", None) for job in skipped]
    return json.dumps(records, indent=2)


def _noun(jobs: list[_Job]) -> str:
    if all(job.clip for job in jobs):
        return "videos"
    return "images" if not any(job.clip for job in jobs) else "inputs"


def _images(jobs: list[_Job]) -> int:
    """How many images the run stylizes, for how many to run at once: a clip counts as many
    (its frames run one per core, like the images of a folder)."""
    return sum(_FRAMES_PER_CLIP if job.clip else 1 for job in jobs)


def _piped_jobs(
    inputs: list[Path], target: _Output | None, label: str, suffix: str | None
) -> list[_Job]:
    """The one job of a run that reads standard input or writes standard output."""
    one_image = "standard output takes one image: give one image file as the input"
    if len(inputs) > 1:
        if _PIPE in inputs:
            raise UsageError("- (standard input) must be the only input")
        raise UsageError(one_image, "'--output'")
    source = inputs[0]
    if source != _PIPE and not source.is_file():
        raise UsageError(one_image, "'--output'")
    if source == _PIPE and sys.stdin.isatty():
        raise UsageError(
            "- reads an image from standard input, which is the terminal here: pipe one in "
            "(< photo.jpg)"
        )
    from stylize.cli._video_run import is_clip

    if source != _PIPE and is_clip(source):
        raise UsageError(
            "a video cannot be written to standard output: give -o FILE, or leave -o out",
            "'--output'",
        )
    if target is not None and target.path != _PIPE and _is_video_name(target.path):
        raise UsageError(
            "a video cannot be read from standard input: give the video file as the input"
        )
    if target is None or target.path == _PIPE:
        if sys.stdout.isatty():
            raise UsageError(
                "refusing to write an image to the terminal: redirect standard output "
                "(> out.png) or give a file",
                "'--output'",
            )
        return [_Job(source, _PIPE)]
    if not target.names_a_file:
        name = f"stdin.{label}{suffix or _FALLBACK_SUFFIX}"
        return [_Job(source, target.path / name)]
    return [_Job(source, target.path)]


def _read(job: _Job) -> LoadedImage:
    from stylize.engine.imageio import load_image, load_image_data

    if job.source == _PIPE:
        data = sys.stdin.buffer.read()
        try:
            return load_image_data(data, "standard input")
        except StylizeError:
            from stylize.cli._video_run import looks_like_video

            if looks_like_video(data):
                raise StylizeError(
                    "standard input holds a video: videos cannot go through standard input; "
                    "give the video file as the input"
                ) from None
            raise
    return load_image(job.source)


def _writer(overwrite: bool, suffix: str | None):
    from stylize.engine.imageio import encode_image, save_image

    def write(job: _Job, image: Image.Image, alpha: Image.Image | None) -> None:
        if job.target != _PIPE:
            save_image(image, job.target, alpha=alpha, overwrite=overwrite)
            return
        data = encode_image(image, suffix or _FALLBACK_SUFFIX, alpha=alpha)
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise StylizeError("standard output was closed before the image was written") from None

    return write


def _plan(
    inputs: list[Path],
    destination: _Output | None,
    recursive: bool,
    label: str,
    suffix: str | None = None,
) -> list[_Job]:
    """The input files and where each result goes."""
    from stylize.cli._video_run import find_clips, is_clip
    from stylize.engine.imageio import find_images

    sources: dict[Path, tuple[Path, Path]] = {}  # resolved file: (file, its output's root)
    for item in inputs:
        if item.is_dir():
            # Results of an earlier run with this style sit beside their inputs: not inputs.
            found = [
                file
                for file in sorted(
                    find_images(item, recursive=recursive) + find_clips(item, recursive)
                )
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
            return [_Job(inputs[0], output, is_clip(inputs[0]))]
        raise UsageError(
            f"{output} looks like a file, but there are several inputs: give a folder",
            "'--output'",
        )
    jobs = []
    for file, root in sources.values():
        clip = is_clip(file)
        if clip:  # a video keeps its container, an animated GIF stays a GIF
            name = f"{file.stem}.{label}{file.suffix}"
        else:
            kept = file.suffix if _writable(file.suffix) else _FALLBACK_SUFFIX
            name = f"{file.stem}.{label}{suffix or kept}"
        if output is None:
            target = file.with_name(name)
        else:
            target = output / file.relative_to(root).with_name(name)
        jobs.append(_Job(file, target, clip))
    return jobs


@dataclass(frozen=True)
class _Output:
    """Where `-o` points: `path`, and whether it was written with a trailing separator."""

    path: Path
    trailing_separator: bool

    @property
    def names_a_file(self) -> bool:
        """Whether `-o` names an output file rather than a folder: it has an image or video
        suffix (`.png`, `.mp4`; `out.v2` is a folder), no trailing separator (`out.png/` is a
        folder) and is not an existing folder."""
        from stylize.engine.imageio import image_suffixes

        suffix = self.path.suffix.lower()
        return (
            (_writable(suffix) or suffix in image_suffixes() or _is_video_name(self.path))
            and not self.trailing_separator
            and not self.path.is_dir()
        )


def _is_video_name(path: Path) -> bool:
    from stylize.engine.video import is_video

    return is_video(path)


def _writable(suffix: str) -> bool:
    from stylize.engine.imageio import OUTPUT_SUFFIXES

    return suffix.lower() in OUTPUT_SUFFIXES


def _check_targets(
    jobs: list[_Job],
    *,
    overwrite: bool,
    skip_existing: bool,
    quiet: bool,
    folders_created: bool,
    crf: int | None = None,
) -> list[_Job]:
    """Refuses before any work what could not be written (and a --crf the output's video
    encoder does not take); drops skipped jobs. With `folders_created`, a target's missing
    folder is left for `_create_folders`."""
    from stylize.cli._video_run import check_crf
    from stylize.engine.imageio import check_output_path
    from stylize.engine.video import check_video_output

    sources = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    remaining = []
    for job in jobs:
        target = job.target.resolve()
        if target in sources:
            raise UsageError(
                f"refusing to overwrite the input {job.source} with a result",
                "'--output'",
            )
        if target in seen:
            raise StylizeError(
                f"{seen[target]} and {job.source} would both be written to {job.target}"
            )
        seen[target] = job.source
        if job.clip:
            check_crf(job, crf)
        if job.target.exists() and skip_existing:
            _console.info(f"skipping {job.source}: {job.target} exists", quiet)
            continue
        if job.target.parent.exists() or not folders_created:
            check = check_video_output if job.clip else check_output_path
            check(job.target, overwrite=overwrite)
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
