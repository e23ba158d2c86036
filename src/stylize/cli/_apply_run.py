"""How `stylize apply` runs: which engine stylizes each image, and the loop that reads,
stylizes and writes them.

On a machine without a GPU, styles of installed networks run on ONNX Runtime in float32
(`engine/onnx_run.py`) and PyTorch is never imported: that saves more time than most photos
take to stylize. Images too large to run whole there, style pictures, model files, `--tile-size`,
GPUs and reduced precision run on PyTorch (`engine/inference.py`). Both take and give NumPy
arrays (N, 3, H, W) in [0, 1], so the loop is the same.

A folder on ONNX Runtime runs one image per CPU core at once, each on one thread: small
convolutions scale better across images than across threads, and reading and writing files
overlaps with the other images' arithmetic. Outputs are reported in input order.

Clips (videos and animated GIFs) run one at a time, each through the `clips` runner
(`_video_run.ClipRunner`), between the images around them.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.cli import _console
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from stylize.engine.imageio import LoadedImage
    from stylize.store.styles import StyleRef

# Images in flight at once on ONNX Runtime; more cores then go to each image's threads.
_MAX_WORKERS = 4
# Share of the available memory one image may take on ONNX Runtime before it runs tiled on
# PyTorch instead (each of the images in flight); without a reading, a fixed budget. Images
# needing less than the floor run whole without asking.
_MEMORY_SHARE = 0.5
_DEFAULT_BUDGET = 2 << 30
_ALWAYS_FITS = 256 << 20
# The exit code of a run stopped by Ctrl-C, as in optimize and train.
INTERRUPTED_EXIT_CODE = 130

Stylize = Callable[..., "np.ndarray"]


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    clip: bool = False  # a video or an animated GIF, run by `Runner.clips`


@dataclass(frozen=True)
class Settings:
    """The options every image is stylized with."""

    scale: float
    strength: float
    preserve_color: bool
    max_size: int | None


class Stylizers:
    """The stylizer for each photo. Subclasses say how many photos run at once (`workers`) and
    whether photos may be batched."""

    workers = 1
    batch_size = 1

    def for_photo(self, content: np.ndarray, strength: float) -> tuple[Stylize, float]:
        """The stylizer for `content` (N, 3, H, W) and the pixel strength left for it."""
        raise NotImplementedError


class OnnxStylizers(Stylizers):
    """Whole images on ONNX Runtime; those too large for memory on PyTorch, tiled, made by
    `fallback` on first need.

    With style pictures (`paintings`: the predictor's graph and the pictures), the style vector
    is their blend; at a strength below 1 each photo moves it towards its own (as
    `engine/styling.PaintingStyle` does), so the strength is spent there, not on pixels."""

    def __init__(
        self,
        graph: Path,
        style: Sequence[float] | None,
        jobs: int,
        fallback: Callable[[], Stylizers],
        *,
        paintings: tuple[Path, Sequence[np.ndarray], Sequence[float]] | None = None,
        strength: float = 1.0,
    ) -> None:
        from stylize.engine.hardware import usable_cpus
        from stylize.engine.onnx_run import OnnxPredictor, OnnxStylizer

        cpus = usable_cpus()
        self.workers = max(1, min(jobs, cpus, _MAX_WORKERS))
        threads = max(1, cpus // self.workers)
        self.predictor: OnnxPredictor | None = None
        if paintings is not None:
            predictor_graph, pictures, mix = paintings
            self.predictor = OnnxPredictor(predictor_graph, threads=cpus)
            vectors = [self.predictor.vector_of(picture) for picture in pictures]
            style = sum(weight * vector for weight, vector in zip(mix, vectors, strict=True))
            self.per_photo = strength < 1.0
        else:
            self.per_photo = False
        self.style = style
        self.stylizer = OnnxStylizer(graph, style, threads=threads)
        self._budget: int | None = None
        self._fallback = fallback
        self._fallen_back: Stylizers | None = None
        self._lock = threading.Lock()

    def for_photo(self, content: np.ndarray, strength: float) -> tuple[Stylize, float]:
        needed = self.stylizer.bytes_per_pixel * content.shape[-2] * content.shape[-1]
        if needed > _ALWAYS_FITS:
            with self._lock:
                if self._budget is None:
                    self._budget = _memory_budget() // self.workers
                if needed > self._budget and self._fallen_back is None:
                    self._fallen_back = self._fallback()
                fallen_back = self._fallen_back if needed > self._budget else None
            if fallen_back is not None:
                return fallen_back.for_photo(content, strength)
        if not self.per_photo:
            return self.stylizer, strength
        import numpy as np

        assert self.predictor is not None and self.style is not None
        own = self.predictor.vector_of(content[:1])
        mixed = own + strength * (np.asarray(self.style) - own)

        def run(images: np.ndarray, **options: Any) -> np.ndarray:
            return self.stylizer(images, style=mixed, **options)

        return run, 1.0


class TorchStylizers(Stylizers):
    """PyTorch on the runtime's device; an image style at a strength below 1 mixes in each
    photo's own style vector, so each photo then gets a network of its own."""

    def __init__(
        self,
        loaded: Any,
        paintings: list[Any],
        runtime: Any,
        *,
        tile_size: int | None,
        style_size: int,
        strength: float,
        batch_size: int,
    ) -> None:
        from stylize.engine.inference import Stylizer
        from stylize.store.convert import ARBITRARY

        self.runtime, self.tile_size = runtime, tile_size
        self.painting = None
        if loaded.family != ARBITRARY:
            self.fixed = Stylizer(loaded.fixed_network(), runtime, tile_size=tile_size)
        else:
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
        self.batch_size = 1 if self.painting is not None else batch_size

    def for_photo(self, content: np.ndarray, strength: float) -> tuple[Stylize, float]:
        import torch

        from stylize.engine.inference import Stylizer

        tensor = torch.from_numpy(content)
        stylizer = self.fixed
        if self.painting is not None:
            net = self.painting.network_for(tensor, strength)
            stylizer = Stylizer(net, self.runtime, tile_size=self.tile_size)
            # The photo's own style vector carries the strength: no pixel blending is left.
            strength = 1.0

        def run(images: np.ndarray, **options: Any) -> np.ndarray:
            return stylizer(torch.from_numpy(images), **options).numpy()

        return run, strength


def make_stylizers(
    refs: Sequence[StyleRef],
    weights: Sequence[float] | None,
    *,
    device: str,
    precision: str,
    tile_size: int | None,
    style_size: int,
    strength: float,
    batch_size: int,
    jobs: int,
    quiet: bool,
) -> Stylizers:
    """The stylizers for `refs` (downloading their network on first use).

    On the CPU, `--precision auto` is float32 whichever engine runs: the result of a photo does
    not depend on its size or on --tile-size."""
    from stylize.engine.onnx_run import on_cpu, runs_on_onnx

    if precision == "auto" and on_cpu(device):
        precision = "fp32"
    messages = {"on_warning": _console.warn, "on_info": lambda text: _console.info(text, quiet)}

    def on_torch(device: str = device, precision: str = precision) -> Stylizers:
        return _torch_stylizers(
            refs,
            weights,
            device=device,
            precision=precision,
            tile_size=tile_size,
            style_size=style_size,
            strength=strength,
            batch_size=batch_size,
            quiet=quiet,
        )

    if tile_size is not None or not runs_on_onnx(device, precision):
        return on_torch()
    from stylize.store.styles import resolve_network_style, resolve_painting_style

    # Style pictures are read before anything is downloaded: a bad one fails at once.
    pictures = [_read_array(ref.image) for ref in refs if ref.image is not None]
    with _console.download_progress("downloading the style network", quiet) as on_download:
        resolved = resolve_network_style(refs, weights, on_download, **messages)
        painting = None
        if resolved is None:
            painting = resolve_painting_style(refs, weights, on_download, **messages)
    if resolved is None and painting is None:  # model files given by path
        return on_torch()
    from stylize.store.compiled import compiled_graph, compiled_predictor

    name, path = (resolved.name, resolved.path) if resolved else (painting.name, painting.path)
    try:
        graph = compiled_graph(name, path)
        predictor = None if painting is None else compiled_predictor(name, path, style_size)
    except StylizeError as error:
        _console.warn(f"{name} runs on PyTorch: {error}")
        return on_torch()

    def fallback() -> Stylizers:
        # Images too large to run whole run tiled, in the same float32 arithmetic.
        return on_torch("cpu", "fp32")

    if resolved is not None:
        return OnnxStylizers(graph, resolved.vector, jobs, fallback)
    assert painting is not None and predictor is not None
    return OnnxStylizers(
        graph,
        None,
        jobs,
        fallback,
        paintings=(predictor, pictures, painting.mix),
        strength=strength,
    )


def _read_array(path: Path) -> np.ndarray:
    from stylize.engine.imageio import image_to_array, load_image

    return image_to_array(load_image(path).rgb)


def _torch_stylizers(
    refs: Sequence[StyleRef],
    weights: Sequence[float] | None,
    *,
    device: str,
    precision: str,
    tile_size: int | None,
    style_size: int,
    strength: float,
    batch_size: int,
    quiet: bool,
) -> Stylizers:
    from stylize.engine.imageio import load_image, to_tensor
    from stylize.engine.runtime import Runtime
    from stylize.store.styles import load_styles

    # Style pictures are read before anything is downloaded: a bad one fails at once.
    paintings = [to_tensor(load_image(ref.image).rgb) for ref in refs if ref.image is not None]
    runtime = Runtime.create(device, precision)
    with _console.download_progress("downloading the style network", quiet) as on_download:
        loaded = load_styles(
            refs,
            weights,
            on_progress=on_download,
            on_warning=_console.warn,
            on_info=lambda message: _console.info(message, quiet),
        )
    return TorchStylizers(
        loaded,
        paintings,
        runtime,
        tile_size=tile_size,
        style_size=style_size,
        strength=strength,
        batch_size=batch_size,
    )


def _memory_budget() -> int:
    from types import SimpleNamespace

    from stylize.engine.memory import available_memory

    available = available_memory(SimpleNamespace(type="cpu"))  # type: ignore[arg-type]
    if available is None:
        return _DEFAULT_BUDGET
    return int(available.bytes * _MEMORY_SHARE)


class Runner:
    """Reads, stylizes and writes images: several at once on ONNX Runtime, batches of
    consecutive same-size images on PyTorch. `write(job, image, alpha)` saves one result;
    `clips(job)` stylizes a clip job into its target. `written` lists the files written."""

    def __init__(
        self,
        stylizers: Stylizers,
        settings: Settings,
        read: Callable[[Job], LoadedImage],
        write: Callable[[Job, Image.Image, Image.Image | None], None],
        clips: Callable[[Job], None] | None = None,
    ) -> None:
        self.stylizers = stylizers
        self.settings = settings
        self.read, self.write = read, write
        self.clips = clips
        self.finished = 0
        self.failed = 0
        self.written: list[Path] = []
        #: Each finished job and its error message (None when written), in input order.
        self.outcomes: list[tuple[Job, str | None]] = []
        #: Whether written paths are printed as they finish (not with --json).
        self.print_results = True
        self.current_clip: Job | None = None

    def run(self, jobs: Sequence[Job], on_progress: Callable[[int], None]) -> None:
        """Runs `jobs` in order: each clip alone, the images between them as before."""
        for is_clip, group in itertools.groupby(jobs, key=lambda job: job.clip):
            if is_clip:
                self._run_clips(list(group), on_progress)
            else:
                self._run_images(list(group), on_progress)

    def interrupted_message(self) -> str:
        """One line for Ctrl-C: what was kept, and which output was not written."""
        kept = [str(path) for path in self.written]
        if not kept:
            kept_text = "nothing was written"
        elif len(kept) <= 3:
            kept_text = f"kept {len(kept)} finished file(s): {', '.join(kept)}"
        else:
            kept_text = (
                f"kept {len(kept)} finished files: {', '.join(kept[:2])} and {len(kept) - 2} more"
            )
        clip = self.current_clip
        if clip is None:
            return f"interrupted: {kept_text}"
        return f"interrupted during {clip.source}: {clip.target} was not written; {kept_text}"

    def _run_clips(self, jobs: Sequence[Job], on_progress: Callable[[int], None]) -> None:
        if self.clips is None:
            raise RuntimeError("clip jobs need a clips runner")
        for job in jobs:
            self.current_clip = job
            try:
                self.clips(job)
            except StylizeError as error:
                self._report(job, error)
            else:
                self._report(job, None)
            self.current_clip = None
            on_progress(self.finished)

    def _run_images(self, jobs: Sequence[Job], on_progress: Callable[[int], None]) -> None:
        if self.stylizers.workers > 1:
            self._run_parallel(jobs, on_progress)
            return
        batch: list[tuple[Job, LoadedImage, np.ndarray]] = []
        for job in jobs:
            try:
                image, content = self._prepare(job)
            except StylizeError as error:
                self._report(job, error)
                on_progress(self.finished)
                continue
            if batch and batch[0][2].shape != content.shape:
                self._flush(batch, on_progress)
                batch = []
            batch.append((job, image, content))
            if len(batch) >= self.stylizers.batch_size:
                self._flush(batch, on_progress)
                batch = []
        self._flush(batch, on_progress)

    def _run_parallel(self, jobs: Sequence[Job], on_progress: Callable[[int], None]) -> None:
        pool = ThreadPoolExecutor(self.stylizers.workers, thread_name_prefix="stylize")
        try:
            # In input order; at most `workers` images are decoded and in memory at once, plus
            # the finished ones waiting for an earlier one to be reported.
            for job, error in pool.map(self._whole_job, jobs):
                self._report(job, error)
                on_progress(self.finished)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _whole_job(self, job: Job) -> tuple[Job, StylizeError | None]:
        try:
            image, content = self._prepare(job)
            (result,) = self._stylize(content)
            self.write(job, _to_image(result), image.alpha)
        except StylizeError as error:
            return job, error
        return job, None

    def _prepare(self, job: Job) -> tuple[LoadedImage, np.ndarray]:
        from stylize.engine.imageio import image_to_array

        image = self.read(job)
        rgb = image.rgb
        if self.settings.max_size is not None:
            rgb = _shrunk(rgb, self.settings.max_size)
        _check_scaled_size(rgb, self.settings.scale)
        return image, image_to_array(rgb)

    def _stylize(self, contents: np.ndarray) -> np.ndarray:
        stylize, strength = self.stylizers.for_photo(contents, self.settings.strength)
        return stylize(
            contents,
            scale=self.settings.scale,
            strength=strength,
            preserve_color=self.settings.preserve_color,
        )

    def _flush(
        self, batch: list[tuple[Job, LoadedImage, np.ndarray]], on_progress: Callable[[int], None]
    ) -> None:
        import numpy as np

        if not batch:
            return
        try:
            results: Iterable[np.ndarray] = self._stylize(
                np.concatenate([content for _, _, content in batch])
            )
        except StylizeError as error:
            for job, _, _ in batch:
                self._report(job, error)
            on_progress(self.finished)
            return
        for (job, image, _), result in zip(batch, results, strict=True):
            try:
                self.write(job, _to_image(result), image.alpha)
            except StylizeError as error:
                self._report(job, error)
            else:
                self._report(job, None)
            on_progress(self.finished)

    def _report(self, job: Job, error: StylizeError | None) -> None:
        self.finished += 1
        self.outcomes.append((job, None if error is None else str(error)))
        if error is None:
            if str(job.target) != "-":
                self.written.append(job.target)
                if self.print_results:
                    _console.result(str(job.target))
            return
        message, source = str(error), str(job.source)
        if source == "-":
            source = "standard input"
        _console.error(message if source in message else f"{source}: {message}")
        self.failed += 1


def _to_image(result: np.ndarray) -> Image.Image:
    from stylize.engine.imageio import array_to_image

    return array_to_image(result)


def _shrunk(image: Image.Image, max_size: int) -> Image.Image:
    """`image` with its long edge at most `max_size`, except that the short edge stays at least
    as large as the model takes (so a very wide image keeps a longer long edge)."""
    from stylize.engine.imageio import resize_long_edge
    from stylize.engine.settings import MIN_IMAGE_SIZE

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
