"""Style transfer by optimizing pixels (Gatys et al.), coarse to fine.

The image is optimized first at a small size, then upsampled and refined at successively
larger sizes; each scale gets half the iterations of the one before it, so most of the work
happens where it is cheap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from stylize.engine import imageio, memory
from stylize.engine.color import preserve_color
from stylize.engine.objective import PerceptualObjective
from stylize.engine.runtime import Runtime
from stylize.engine.settings import (
    GatysSettings,
    check_style_blend,
    default_scale_count,
    option_name,
)
from stylize.engine.vgg import VGGFeatures, check_taps, min_input_size
from stylize.errors import StylizeError

__all__ = [
    "GatysSettings",
    "GatysTransfer",
    "blend_weights",
    "default_scale_count",
    "scale_edges",
    "split_iterations",
]

LBFGS_HISTORY = 50
# A total loss this many times above where its scale started, or above the sum of the weights
# (every relative loss at 1, a complete mismatch), means the optimization has diverged.
DIVERGENCE_FACTOR = 1e3
# How often losses are read back from an accelerator while Adam runs ahead asynchronously.
REPORT_INTERVAL_S = 0.1

ProgressCallback = Callable[..., None]
SnapshotCallback = Callable[[int, Tensor], None]


def scale_edges(size: int, scales: int) -> list[int]:
    """The long edge of each scale, coarsest first, doubling up to `size`."""
    return [max(1, round(size / 2 ** (scales - 1 - index))) for index in range(scales)]


def split_iterations(total: int, scales: int) -> list[int]:
    """`total` iterations over `scales`, each scale getting half as many as the one before."""
    if total < scales:
        raise StylizeError(f"{total} iterations cannot cover {scales} scales: use more")
    shares = [2.0**-index for index in range(scales)]
    exact = [total * share / sum(shares) for share in shares]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(scales), key=lambda index: counts[index] - exact[index])
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    # A scale whose share rounds to nothing still gets one iteration, from the coarsest scale.
    for index in range(scales):
        if counts[index] == 0:
            counts[index] = 1
            counts[0] -= 1
    return counts


def blend_weights(blend: Sequence[float] | None, count: int) -> list[float]:
    """Style blend weights normalized to sum 1 (equal when `blend` is None)."""
    if blend is None:
        return [1.0 / count] * count
    check_style_blend(blend, count)
    return [weight / sum(blend) for weight in blend]


class GatysTransfer:
    """One optimization run. The constructor checks everything that can be checked before any
    computation; `run` does the work; `current_image` is the result so far (for Ctrl-C)."""

    def __init__(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        settings: GatysSettings = GatysSettings(),
        *,
        runtime: Runtime | None = None,
        init_image: Image.Image | None = None,
    ) -> None:
        settings.validate(style_count=len(styles), has_init_image=init_image is not None)
        if not styles:
            raise StylizeError("at least one style image is needed")
        self.settings = settings
        self.runtime = runtime or Runtime(torch.device("cpu"))
        self.device = self.runtime.device
        self._style_weights = blend_weights(settings.style_blend, len(styles))
        self._content_layers = check_taps(settings.content_layers)
        self._style_layers = check_taps(settings.style_layers)
        scales = settings.scales or default_scale_count(settings.size)
        self.iterations = split_iterations(settings.iterations, scales)
        edges = scale_edges(settings.size, scales)
        # Sizes first: checking them (and the memory they take) needs no resized image.
        sizes = [_fitted(content.size, edge) for edge in edges]
        originals = [style.size for style in styles]
        style_sizes = [_style_sizes(originals, size, settings.style_scale) for size in sizes]
        self._check_sizes(sizes, style_sizes)
        self._check_memory(content.size, originals)
        self._contents = [imageio.resize_long_edge(content, edge) for edge in edges]
        self._styles = [
            [
                imageio.resize_long_edge(style, max(scaled))
                for style, scaled in zip(styles, each, strict=True)
            ]
            for each in style_sizes
        ]
        self._init_image = init_image
        self._image: Tensor | None = None
        # Where the run is, for an out-of-memory message: (scale, "style" or "image").
        self._stage: tuple[int, str] | None = None

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each scale, coarsest first; the last is the output size."""
        return [image.size for image in self._contents]

    def run(
        self,
        vgg_weights: Mapping[str, Tensor],
        on_progress: ProgressCallback | None = None,
        *,
        on_snapshot: SnapshotCallback | None = None,
        snapshot_every: int = 0,
    ) -> Tensor:
        """Optimizes and returns the final image, (1, 3, H, W) in [0, 1].

        `on_progress(completed, total, **values)` is called after every iteration with the
        scale's progress and `scale`, `scales`, `width`, `height`, `iteration` (counted over
        all scales), the weighted losses `content`, `style`, `tv`, `loss` (their sum) and
        `elapsed` seconds. `on_snapshot(iteration, image)` receives the image every
        `snapshot_every` iterations.

        Running out of memory anyway (the estimate checked before was wrong, or something else
        took the memory meanwhile) is a StylizeError that names the size that failed."""
        try:
            return self._run(vgg_weights, on_progress, on_snapshot, snapshot_every)
        except Exception as error:
            detail = memory.out_of_memory_detail(error)
            if detail is None:
                raise
            message = self._out_of_memory_message(detail)
        # Raised outside the handler, so the failed allocation's tensors can go at once.
        raise StylizeError(message)

    def _run(
        self,
        vgg_weights: Mapping[str, Tensor],
        on_progress: ProgressCallback | None,
        on_snapshot: SnapshotCallback | None,
        snapshot_every: int,
    ) -> Tensor:
        self._stage = None
        vgg = VGGFeatures(
            vgg_weights, self._content_layers + self._style_layers, self.settings.pooling
        ).to(self.device)
        started = time.perf_counter()
        iteration = 0
        for scale, iterations in enumerate(self.iterations):
            self._stage = (scale, "style")
            content = imageio.to_tensor(self._contents[scale], self.device)
            if self.settings.preserve_color:
                content = _luminance(content)
            self._image = self._starting_image(scale, content)
            objective = self._objective(vgg, content, scale)
            self._stage = (scale, "image")
            step = self._stepper(objective)
            reports = _Reports(
                on_progress,
                started,
                scale=scale,
                sizes=self.sizes,
                iterations=iterations,
                weight_sum=sum(
                    (
                        self.settings.content_weight,
                        self.settings.style_weight,
                        self.settings.tv_weight,
                    )
                ),
            )
            for scale_iteration in range(1, iterations + 1):
                iteration += 1
                reports.add(step(), scale_iteration, iteration)
                snapshot_due = snapshot_every > 0 and iteration % snapshot_every == 0
                if (
                    scale_iteration == iterations
                    or snapshot_due
                    or self._reads_back_every_iteration
                    or reports.overdue()
                ):
                    reports.flush()
                if snapshot_due and on_snapshot is not None:
                    on_snapshot(iteration, self._finished(self._image, scale))
        final = self.current_image()
        assert final is not None
        return final

    @property
    def style_sizes(self) -> list[list[tuple[int, int]]]:
        """(width, height) of each style image at each scale, coarsest first."""
        return [[image.size for image in styles] for styles in self._styles]

    def current_image(self) -> Tensor | None:
        """The image so far at the output size, colors handled as asked; None before `run`."""
        if self._image is None:
            return None
        image = self._image.detach()
        if not torch.isfinite(image).all():
            raise StylizeError("the image contains invalid values (NaN); nothing to save")
        width, height = self.sizes[-1]
        if image.shape[-2:] != (height, width):
            image = F.interpolate(
                image.clamp(0, 1), size=(height, width), mode="bicubic", align_corners=False
            )
        return self._finished(image, len(self.sizes) - 1)

    @property
    def _reads_back_every_iteration(self) -> bool:
        # L-BFGS reads every loss back anyway; on the CPU reading back costs nothing.
        return self.settings.optimizer == "lbfgs" or self.device.type == "cpu"

    def _check_sizes(
        self, sizes: list[tuple[int, int]], style_sizes: list[list[tuple[int, int]]]
    ) -> None:
        needed = min_input_size(self._content_layers + self._style_layers)
        needed_by_styles = min_input_size(self._style_layers)
        count = len(sizes)
        size, scales, style_scale = (
            option_name(GatysSettings, name) for name in ("size", "scales", "style_scale")
        )
        for scale, (content, styles) in enumerate(zip(sizes, style_sizes, strict=True)):
            where = f"at scale {scale + 1} of {count}" if count > 1 else f"at this {size}"
            fewer_scales = f" or fewer {scales}" if count > 1 else ""
            if min(content) < needed:
                raise StylizeError(
                    f"the content image is {content[0]}x{content[1]} pixels {where}, too "
                    f"small for the VGG19 layers used (at least {needed} pixels a side): use a "
                    f"larger {size}{fewer_scales}"
                )
            for style in styles:
                if min(style) < needed_by_styles:
                    raise StylizeError(
                        f"a style image is {style[0]}x{style[1]} pixels {where}, too small "
                        f"for the style layers (at least {needed_by_styles} pixels a side): use a "
                        f"larger {style_scale} or {size}{fewer_scales}"
                    )

    def _estimate(
        self,
        content: tuple[int, int],
        styles: Sequence[tuple[int, int]],
        *,
        size: int | None = None,
        style_scale: float | None = None,
        optimizer: str | None = None,
    ) -> memory.Estimate:
        """The memory estimate of the largest scale, at this run's settings or at another
        `size`, `style_scale` or `optimizer`."""
        settings = self.settings
        output = _fitted(content, settings.size if size is None else size)
        scale = settings.style_scale if style_scale is None else style_scale
        return memory.optimize_estimate(
            output,
            _style_sizes(styles, output, scale),
            taps=self._content_layers + self._style_layers,
            optimizer=optimizer or settings.optimizer,
            reduced_precision=self.runtime.dtype is not None,
        )

    def _check_memory(self, content: tuple[int, int], styles: Sequence[tuple[int, int]]) -> None:
        """StylizeError, before anything is allocated, when the largest scale will not fit in
        what the device has left; the message says what would."""
        if not memory.checks_enabled():
            return
        available = memory.available_memory(self.device)
        if available is None:
            return
        estimate = self._estimate(content, styles)
        if estimate.total <= available.bytes:
            return
        settings = self.settings
        size, style_scale, optimizer = (
            option_name(GatysSettings, name) for name in ("size", "style_scale", "optimizer")
        )
        advice = []
        style_bound = estimate.style_pass > estimate.image_pass + estimate.optimizer_state
        largest = memory.largest_fitting(
            lambda edge: self._estimate(content, styles, size=edge).total <= available.bytes,
            min_input_size(self._content_layers + self._style_layers),
            settings.size,
        )
        if largest is not None:
            advice.append(f"{size} {memory.round_down(largest)} or smaller")
        if style_bound:
            percent = memory.largest_fitting(
                lambda hundredths: (
                    self._estimate(content, styles, style_scale=hundredths / 100).total
                    <= available.bytes
                ),
                1,
                max(1, math.floor(settings.style_scale * 100)),
            )
            if percent is not None:  # what does not fit is the style images: say that first
                advice.insert(0, f"{style_scale} {percent / 100:g} or less")
        if settings.optimizer == "lbfgs":
            adam = self._estimate(content, styles, optimizer="adam").total
            if adam <= available.bytes:
                advice.append(
                    f"{optimizer} adam, which keeps no L-BFGS history "
                    f"(about {memory.format_bytes(adam)})"
                )
        width, height = _fitted(content, settings.size)
        memory.check_fits(
            estimate.total,
            available,
            f"optimize at {width}x{height}",
            f"use {', or '.join(advice)}" if advice else "close other programs to free memory",
        )

    def _out_of_memory_message(self, detail: str) -> str:
        size, style_scale, optimizer = (
            option_name(GatysSettings, name) for name in ("size", "style_scale", "optimizer")
        )
        if self._stage is None:
            return (
                f"ran out of memory loading the VGG19 loss network on {self.device}: {detail}; "
                "close other programs to free memory"
            )
        scale, stage = self._stage
        width, height = self.sizes[scale]
        count = len(self.sizes)
        where = f"{width}x{height}" + (f" (scale {scale + 1} of {count})" if count > 1 else "")
        if stage == "style":
            style_width, style_height = max(self.style_sizes[scale], key=lambda s: s[0] * s[1])
            return (
                f"ran out of memory computing the style targets at {where} on {self.device}, "
                f"style images up to {style_width}x{style_height}: {detail}; use a smaller "
                f"{style_scale} or {size}"
            )
        adam = f", or {optimizer} adam" if self.settings.optimizer == "lbfgs" else ""
        return (
            f"ran out of memory at {where} on {self.device}: {detail}; use a smaller {size}{adam}"
        )

    def _starting_image(self, scale: int, content: Tensor) -> Tensor:
        """The first scale's initialization, or the previous scale's result upsampled."""
        height, width = content.shape[-2:]
        if scale > 0:
            assert self._image is not None
            image = F.interpolate(
                self._image.detach().clamp(0, 1),
                size=(height, width),
                mode="bicubic",
                align_corners=False,
            )
        elif self.settings.init == "content":
            image = content
        elif self.settings.init == "noise":
            generator = torch.Generator()
            if self.settings.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.settings.seed)
            image = torch.rand(content.shape, generator=generator).to(self.device)
        elif self.settings.init == "style":
            image = sum(
                (
                    weight * self._prepared(_stretched(style, width, height))
                    for weight, style in zip(self._style_weights, self._styles[0], strict=True)
                ),
                torch.zeros_like(content),
            )
            if self.settings.preserve_color:
                image = _match_luminance(image, content)
        else:
            assert self._init_image is not None
            image = self._prepared(_stretched(self._init_image, width, height))
        return image.clamp(0, 1).contiguous().requires_grad_(True)

    def _prepared(self, image: Image.Image) -> Tensor:
        tensor = imageio.to_tensor(image, self.device)
        return _luminance(tensor) if self.settings.preserve_color else tensor

    def _objective(
        self, vgg: VGGFeatures, content: Tensor, scale: int
    ) -> Callable[[Tensor], Tensor]:
        """The loss function of this scale: image -> weighted [content, style, tv, total]."""
        settings = self.settings
        objective = PerceptualObjective(
            self._content_layers,
            self._style_layers,
            settings.content_weight,
            settings.style_weight,
            settings.tv_weight,
        )

        def style_features(style: Image.Image) -> dict[str, Tensor]:
            tensor = self._prepared(style)
            if settings.preserve_color:
                tensor = _match_luminance(tensor, content)
            return vgg(tensor)

        with torch.no_grad(), self.runtime.autocast():
            content_targets = objective.content_targets(vgg(content))
            # Several styles blend by their Gram matrices: the target is their weighted mean.
            style_targets = objective.style_targets(
                map(style_features, self._styles[scale]), self._style_weights
            )

        def losses(image: Tensor) -> Tensor:
            with self.runtime.autocast():
                features = vgg(image)
            return objective(image, features, content_targets, style_targets)

        return losses

    def _stepper(self, objective: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
        """One optimizer iteration per call; returns the losses it evaluated (before its step)."""
        image = self._image
        assert image is not None
        # The losses are means, so their gradient per pixel shrinks with the image; scaling it
        # back up keeps it well above Adam's epsilon and inside float16's range.
        gradient_scale = float(image[0].numel())
        evaluated: list[Tensor] = []

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            losses = objective(image)
            scaled_total = losses[-1] * gradient_scale
            scaled_total.backward()
            evaluated.append(losses.detach())
            return scaled_total

        optimizer: torch.optim.Optimizer
        if self.settings.optimizer == "lbfgs":
            # Defaults would stop early on tolerances tuned for other loss scales; the
            # iteration count decides instead.
            optimizer = torch.optim.LBFGS(
                [image],
                lr=1,
                max_iter=1,
                history_size=LBFGS_HISTORY,
                tolerance_grad=0,
                tolerance_change=0,
            )

            def step() -> Tensor:
                evaluated.clear()
                optimizer.step(closure)
                return evaluated[0]

        else:
            optimizer = torch.optim.Adam([image], lr=self.settings.lr)

            def step() -> Tensor:
                evaluated.clear()
                closure()
                optimizer.step()
                with torch.no_grad():
                    image.clamp_(0, 1)
                return evaluated[0]

        return step

    def _finished(self, image: Tensor, scale: int) -> Tensor:
        image = image.detach().clamp(0, 1)
        if not self.settings.preserve_color:
            return image
        return preserve_color(image, imageio.to_tensor(self._contents[scale], self.device))


class _Reports:
    """Losses of one scale's recent iterations, read back from the device in batches, checked
    for NaN and divergence, and passed to `on_progress`."""

    def __init__(
        self,
        on_progress: ProgressCallback | None,
        started: float,
        *,
        scale: int,
        sizes: list[tuple[int, int]],
        iterations: int,
        weight_sum: float,
    ) -> None:
        self._on_progress = on_progress
        self._started = started
        self._scale = scale
        self._sizes = sizes
        self._iterations = iterations
        self._weight_sum = weight_sum
        self._pending: list[tuple[Tensor, int, int, float]] = []
        self._last_flush = time.perf_counter()
        self._limit: float | None = None

    def add(self, losses: Tensor, scale_iteration: int, iteration: int) -> None:
        self._pending.append(
            (losses, scale_iteration, iteration, time.perf_counter() - self._started)
        )

    def overdue(self) -> bool:
        return time.perf_counter() - self._last_flush >= REPORT_INTERVAL_S

    def flush(self) -> None:
        if not self._pending:
            return
        width, height = self._sizes[self._scale]
        values = torch.stack([losses for losses, *_ in self._pending]).tolist()
        for (content, style, tv, total), (_, scale_iteration, iteration, elapsed) in zip(
            values, self._pending, strict=True
        ):
            where = f"iteration {iteration} (scale {self._scale + 1} of {len(self._sizes)})"
            if not math.isfinite(total):
                raise StylizeError(
                    f"the loss became {total} at {where}; nothing was saved. Try --precision fp32, "
                    "or --optimizer adam with a smaller --lr"
                )
            if self._limit is None:
                self._limit = DIVERGENCE_FACTOR * max(total, self._weight_sum)
            if total > self._limit:
                raise StylizeError(
                    f"the loss exploded to {total:.4g} at {where}; nothing was saved. Try "
                    "smaller weights, or --optimizer adam with a smaller --lr"
                )
            if self._on_progress is not None:
                self._on_progress(
                    scale_iteration,
                    self._iterations,
                    scale=self._scale + 1,
                    scales=len(self._sizes),
                    width=width,
                    height=height,
                    iteration=iteration,
                    content=content,
                    style=style,
                    tv=tv,
                    loss=total,
                    elapsed=elapsed,
                )
        self._pending.clear()
        self._last_flush = time.perf_counter()


def _fitted(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """The (width, height) `imageio.resize_long_edge` gives an image of `size`."""
    width, height = size
    scale = long_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _style_sizes(
    styles: Sequence[tuple[int, int]], content: tuple[int, int], style_scale: float
) -> list[tuple[int, int]]:
    """The sizes of the style images next to a content image of size `content`."""
    edge = max(1, round(max(content) * style_scale))
    return [_fitted(style, edge) for style in styles]


def _stretched(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _luminance(image: Tensor) -> Tensor:
    """The BT.601 luma of an RGB image, repeated in all three channels."""
    red, green, blue = image.unbind(1)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return luma.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _match_luminance(image: Tensor, reference: Tensor) -> Tensor:
    """`image` shifted and scaled to the mean and spread of `reference` (Gatys et al. 2017), so
    a luminance-only transfer keeps the content's brightness and contrast."""
    spread = image.std().clamp_min(1e-6)
    return ((image - image.mean()) / spread * reference.std() + reference.mean()).clamp(0, 1)
