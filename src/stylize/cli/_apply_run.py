"""How `stylize apply` runs its inputs: the loop that reads, stylizes and writes images, with
the stylizers `_stylizers.make_stylizers` chose.

When the stylizers run several images at once (ONNX Runtime: one per CPU core), each worker
reads, stylizes and writes whole images, so reading and writing files overlaps with the other
images' arithmetic; outputs are reported in input order. Otherwise (PyTorch) consecutive
images of the same size are batched.

Clips (videos and animated GIFs) run one at a time, each through the `clips` runner
(`_video_run.ClipRunner`), between the images around them.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stylize.cli import _console
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from stylize.cli._stylizers import Stylizers
    from stylize.engine.imageio import LoadedImage

# The exit code of a run stopped by Ctrl-C, as in optimize and train.
INTERRUPTED_EXIT_CODE = 130


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
        #: The files written, in the order they were (for Ctrl-C's message).
        self.written: list[Path] = []
        self._written_lock = threading.Lock()
        # Set by Ctrl-C: images still being stylized by the workers are not written any more.
        self._stopping = threading.Event()
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
                self._wrote(job)
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
        from concurrent.futures import ThreadPoolExecutor  # with logging, ~4 ms of start-up

        pool = ThreadPoolExecutor(self.stylizers.workers, thread_name_prefix="stylize")
        try:
            # In input order; at most `workers` images are decoded and in memory at once, plus
            # the finished ones waiting for an earlier one to be reported.
            for job, error in pool.map(self._whole_job, jobs):
                self._report(job, error)
                on_progress(self.finished)
        except KeyboardInterrupt:
            self._stopping.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _whole_job(self, job: Job) -> tuple[Job, StylizeError | None]:
        try:
            image, content = self._prepare(job)
            (result,) = self._stylize(content)
            if self._stopping.is_set():
                return job, None  # Ctrl-C: nobody waits for this result any more
            self.write(job, _to_image(result), image.alpha)
        except StylizeError as error:
            return job, error
        self._wrote(job)
        return job, None

    def _prepare(self, job: Job) -> tuple[LoadedImage, np.ndarray]:
        from stylize.engine.imageio import image_to_array

        image = self.read(job)
        rgb = image.rgb
        if self.settings.max_size is not None:
            rgb = shrunk(rgb, self.settings.max_size)
        check_scaled_size(rgb, self.settings.scale)
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
                self._wrote(job)
                self._report(job, None)
            on_progress(self.finished)

    def _wrote(self, job: Job) -> None:
        if str(job.target) != "-":
            with self._written_lock:
                self.written.append(job.target)

    def _report(self, job: Job, error: StylizeError | None) -> None:
        self.finished += 1
        self.outcomes.append((job, None if error is None else str(error)))
        if error is None:
            if str(job.target) != "-" and self.print_results:
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


def shrunk(image: Image.Image, max_size: int) -> Image.Image:
    """`image` with its long edge at most `max_size`, except that the short edge stays at least
    as large as the model takes (so a very wide image keeps a longer long edge)."""
    from stylize.engine.imageio import resize_long_edge
    from stylize.engine.settings import MIN_IMAGE_SIZE

    long_edge, short_edge = max(image.size), min(image.size)
    target = max(max_size, math.ceil(MIN_IMAGE_SIZE * long_edge / short_edge))
    return resize_long_edge(image, target) if target < long_edge else image


def check_scaled_size(image: Image.Image, scale: float) -> None:
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
