"""Which engine stylizes each image of `stylize apply` (and `sheet`).

On a machine without a GPU, installed networks and style pictures run on ONNX Runtime in
float32 (`engine/onnx_run.py`) and PyTorch is never imported: that saves more time than most
photos take to stylize. Images too large to run whole there, model files given by path,
`--tile-size`, GPUs and reduced precision run on PyTorch (`engine/inference.py`). Both take and
give NumPy arrays (N, 3, H, W) in [0, 1], so `_apply_run.Runner` runs either the same way.

On ONNX Runtime several images run at once (`workers`), each on `cpus // workers` threads:
small convolutions scale better across images than across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.cli import _console
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import numpy as np

    from stylize.store.styles import StyleRef

# Images in flight at once on ONNX Runtime; more cores then go to each image's threads.
_MAX_WORKERS = 4
# Share of the available memory one image may take on ONNX Runtime before it runs tiled on
# PyTorch instead (each of the images in flight); without a reading, a fixed budget. Images
# needing less than the floor run whole without asking.
_MEMORY_SHARE = 0.5
_DEFAULT_BUDGET = 2 << 30
_ALWAYS_FITS = 256 << 20

Stylize = Callable[..., "np.ndarray"]


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
        scale: float = 1.0,
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
        self.scale = scale
        self.stylizer = OnnxStylizer(graph, style, threads=threads)
        self._budget: int | None = None
        self._fallback = fallback
        self._fallen_back: Stylizers | None = None
        self._lock = threading.Lock()

    def for_photo(self, content: np.ndarray, strength: float) -> tuple[Stylize, float]:
        from stylize.engine.onnx_run import scaled_size

        height, width = scaled_size(*content.shape[-2:], self.scale)  # what the network sees
        needed = self.stylizer.bytes_per_pixel * height * width
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
    scale: float = 1.0,
) -> Stylizers:
    """The stylizers for `refs` (downloading their network on first use); `scale` is apply's
    --scale, which decides the memory an image needs.

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

    def fallback() -> Stylizers:
        # Images too large to run whole run tiled, in the same float32 arithmetic.
        return on_torch("cpu", "fp32")

    def onnx_stylizers() -> Stylizers:
        graph = compiled_graph(name, path)
        if resolved is not None:
            return OnnxStylizers(graph, resolved.vector, jobs, fallback, scale=scale)
        assert painting is not None
        predictor = compiled_predictor(name, path, style_size)
        paintings = (predictor, pictures, painting.mix)
        return OnnxStylizers(
            graph, None, jobs, fallback, paintings=paintings, strength=strength, scale=scale
        )

    try:
        try:
            return onnx_stylizers()
        except StylizeError:
            # A cached graph that no longer loads (a damaged file): export it again, once.
            from stylize.store.compiled import remove_graphs

            remove_graphs(name)
            return onnx_stylizers()
    except (StylizeError, OSError) as error:
        # No graph (a network without an ONNX form, a cache that cannot be written).
        reason = error if isinstance(error, StylizeError) else error.strerror or error
        _console.warn(f"{name} runs on PyTorch: {reason}")
        return on_torch()


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
    if runtime.device.type == "cpu" and precision == "auto" and runtime.dtype is not None:
        # PyTorch found no GPU after all: on the CPU, apply's auto is float32 (make_stylizers).
        runtime = Runtime.create(device, "fp32")
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
    """A share of the memory available: Linux's accounts (cgroup, ulimit, MemAvailable) where
    there are some, else what the system reports."""
    from stylize.engine.hardware import usable_memory
    from stylize.engine.memory import available_cpu_memory

    available = available_cpu_memory()
    usable = available.bytes if available is not None else usable_memory()
    return _DEFAULT_BUDGET if usable is None else int(usable * _MEMORY_SHARE)
