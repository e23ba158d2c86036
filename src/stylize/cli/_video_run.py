"""How `stylize apply` runs a video (or an animated GIF): decode, stylize, stabilize, encode,
one frame at a time, so memory stays flat whatever the length.

A clip gets one stylizer for all its frames, chosen for its first frame: with a style picture
at a --strength below 1 the style vector that mixes in the photo's own style is computed from
that frame and kept, so the style does not drift (or flicker) with the content, and the style
predictor runs once. Frames are stylized on `Stylizers.workers` threads, a few frames ahead,
while this thread decodes, stabilizes (engine/temporal.py) and encodes (engine/video.py) in
order. The output appears under its name only once the clip is complete: an error or Ctrl-C
leaves nothing there.

PyAV and OpenCV are imported when the first clip runs: image-only runs never load them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.cli import _console
from stylize.cli._apply_run import Job, Settings, check_scaled_size, shrunk
from stylize.cli._stylizers import Stylizers

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np

    from stylize.engine.video import VideoInfo

PROGRESS_FIELDS = "{fps:.1f} fps"


@dataclass(frozen=True)
class ClipOptions:
    """The options only clips use."""

    temporal_weight: float
    crf: int | None
    overwrite: bool
    quiet: bool


def is_clip(path: Path) -> bool:
    """Whether `path` is stylized as a video: a video file by its suffix, or a GIF with more
    than one frame (a still GIF is an image, written as PNG like before)."""
    from stylize.engine.video import is_video

    if not is_video(path):
        return False
    if path.suffix.lower() != ".gif":
        return True
    from PIL import Image

    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except (OSError, ValueError):
        return False  # unreadable: the image reader says why


def find_clips(folder: Path, recursive: bool) -> list[Path]:
    """Video files in `folder` (and its subfolders if `recursive`) other than GIFs, which the
    image scan finds; hidden files and folders skipped, as for images."""
    from stylize.engine.video import VIDEO_SUFFIXES

    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.suffix.lower() in VIDEO_SUFFIXES
        and path.suffix.lower() != ".gif"
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def looks_like_video(data: bytes) -> bool:
    """Whether `data` starts like an mp4/mov, Matroska/WebM or AVI file (a video piped in)."""
    return (
        data[4:8] == b"ftyp"
        or data[:4] == b"\x1a\x45\xdf\xa3"
        or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")
    )


def check_crf(job: Job, crf: int | None) -> None:
    """A usage error for a --crf outside the range of the encoder of the
    clip's output."""
    from stylize.cli._parser import UsageError
    from stylize.engine.video import CRF_RANGE, video_codec_for

    codec = video_codec_for(job.target)
    if crf is not None and codec in CRF_RANGE:
        low, high = CRF_RANGE[codec]
        if not low <= crf <= high:
            raise UsageError(
                f"{crf} is outside {low} to {high}, the range of {codec} ({job.target.name})",
                "'--crf'",
            )


class ClipRunner:
    """Stylizes one clip into its job's target (`runner(job)`), reporting frames on a bar of its
    own; raises StylizeError (nothing written) or KeyboardInterrupt (nothing written)."""

    def __init__(self, stylizers: Stylizers, settings: Settings, options: ClipOptions) -> None:
        self.stylizers, self.settings, self.options = stylizers, settings, options

    def __call__(self, job: Job) -> None:
        from stylize.engine.imageio import array_to_pixels, pixels_to_array
        from stylize.engine.temporal import TemporalStabilizer
        from stylize.engine.video import open_video, write_video

        with open_video(job.source) as reader:
            info = reader.info
            frames = reader.frames()
            first = next(frames)
            resize = self._frame_size(first.image)
            out_info = info if resize is None else replace(info, width=resize[0], height=resize[1])
            first_image = self._resized(first.image, resize)
            stylize, strength = self.stylizers.for_photo(
                pixels_to_array(first_image), self.settings.strength
            )
            stabilize = TemporalStabilizer(self.options.temporal_weight)

            def stylized(image: np.ndarray) -> np.ndarray:
                result = stylize(
                    pixels_to_array(image),
                    scale=self.settings.scale,
                    strength=strength,
                    preserve_color=self.settings.preserve_color,
                )
                return array_to_pixels(result)

            inputs = _chain(first, frames, lambda image: self._resized(image, resize))
            with write_video(
                job.target, out_info, crf=self.options.crf, overwrite=self.options.overwrite
            ) as writer:
                self._notes(job, writer)
                total = _expected_frames(info)
                with _console.progress(
                    job.source.name, total, self.options.quiet, fields=PROGRESS_FIELDS
                ) as on_progress:
                    start = time.perf_counter()
                    workers = max(1, self.stylizers.workers)
                    done, fps = 0, 0.0
                    for (image, pts), result in _ahead(inputs, stylized, workers):
                        writer.write(stabilize(image, result), pts)
                        done = writer.frames_written
                        fps = done / max(time.perf_counter() - start, 1e-9)
                        grown = None if total is None or done <= total else done
                        on_progress(done, grown, fps=fps)
                    on_progress(done, done, fps=fps)  # the estimate's total, corrected

    def _frame_size(self, image: np.ndarray) -> tuple[int, int] | None:
        """The (width, height) frames are stylized and written at: None when they keep theirs
        (--max-size shrinks them); refuses a --scale too large, as for images."""
        from PIL import Image

        picture = Image.fromarray(image)
        resized = picture
        if self.settings.max_size is not None:
            resized = shrunk(picture, self.settings.max_size)
        check_scaled_size(resized, self.settings.scale)
        return None if resized.size == picture.size else resized.size

    @staticmethod
    def _resized(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        if size is None:
            return image
        import numpy as np
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))

    def _notes(self, job: Job, writer: Any) -> None:
        quiet = self.options.quiet
        if writer.adjustment:
            _console.info(f"note: {job.target.name}: {writer.adjustment}", quiet)
        if writer.rotation_applied:
            _console.info(
                f"note: {job.target.name}: the frames are turned upright (this PyAV cannot "
                f"write the rotation, {writer.source.rotation} degrees, as metadata)",
                quiet,
            )
        if writer.audio_dropped:
            _console.warn(
                f"{job.target.name}: GIF has no sound: the audio of {job.source.name} is left out"
            )


def _chain(
    first: Any, rest: Iterator[Any], prepare: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[np.ndarray, int]]:
    yield prepare(first.image), first.pts
    for frame in rest:
        yield prepare(frame.image), frame.pts


def _ahead(
    items: Iterator[tuple[np.ndarray, int]],
    work: Callable[[np.ndarray], np.ndarray],
    workers: int,
) -> Iterator[tuple[tuple[np.ndarray, int], np.ndarray]]:
    """(item, work(item's image)) in order, with `work` running on `workers` threads up to
    `workers + 1` items ahead of the consumer (so decoding, stabilizing and encoding here
    overlap the stylization). An exception of `work` (KeyboardInterrupt included) comes out
    at its item; leaving early cancels what has not started and waits for what has."""
    from concurrent.futures import ThreadPoolExecutor  # not at import: apply asks is_clip()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="stylize-frame")
    pending: deque[tuple[tuple[np.ndarray, int], Future[np.ndarray]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(work, item[0])))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _expected_frames(info: VideoInfo) -> int | None:
    """The clip's frame count, or an estimate from its duration and rate (for the ETA)."""
    if info.frame_count:
        return info.frame_count
    if info.duration:
        return max(1, round(info.duration * info.frame_rate))
    return None
