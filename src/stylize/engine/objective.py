"""The perceptual objective of optimize and train: content, style and total variation over VGG
features, weighted and summed.

Both commands run VGG under the runtime's autocast (where reduced precision pays) and hand the
features here. Everything below runs in float32 with autocast off, by construction: Gram
matrices of large images overflow float16, and bfloat16 sums lose about half a percent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stylize.engine.losses import content_loss, gram_matrix, style_loss, total_variation_loss
from stylize.engine.runtime import full_precision

Features = Mapping[str, Tensor]

#: The order of the values `PerceptualObjective.__call__` returns.
LOSS_NAMES = ("content", "style", "tv", "total")


@dataclass(frozen=True)
class PerceptualObjective:
    """Content loss at `content_layers`, style (Gram) loss at `style_layers`, total variation,
    weighted by `content_weight`, `style_weight` and `tv_weight`. Content and style terms are
    averaged over their layers, so the weights do not depend on how many layers are used."""

    content_layers: Sequence[str]
    style_layers: Sequence[str]
    content_weight: float
    style_weight: float
    tv_weight: float

    def content_targets(self, features: Features) -> dict[str, Tensor]:
        """What the content loss compares with: the content image's features, in float32."""
        return {name: features[name].detach().float() for name in self.content_layers}

    def style_targets(
        self, features: Iterable[Features], blend: Sequence[float] = (1.0,)
    ) -> dict[str, Tensor]:
        """The Gram matrices the style loss aims at: the weighted mean of those of the style
        images whose features `features` yields, by the weights `blend` (summing to 1). The
        features are taken one image at a time, so only the Gram matrices stay in memory."""
        targets: dict[str, Tensor] = {}
        with torch.no_grad():
            for weight, each in zip(blend, features, strict=True):
                for name in self.style_layers:
                    gram = weight * gram_matrix(each[name])
                    targets[name] = targets[name] + gram if name in targets else gram
        return targets

    def __call__(
        self,
        image: Tensor,
        features: Features,
        content_targets: Mapping[str, Tensor],
        style_targets: Mapping[str, Tensor],
    ) -> Tensor:
        """The weighted losses of `image` (whose VGG features are `features`) as a float32
        tensor: content, style, total variation, and their sum (see LOSS_NAMES)."""
        with full_precision(image.device.type):
            zero = image.new_zeros((), dtype=torch.float32)
            content = sum(
                (content_loss(features[name], content_targets[name]) for name in content_targets),
                zero,
            ) / max(len(content_targets), 1)
            style = sum(
                (style_loss(features[name], style_targets[name]) for name in style_targets),
                zero,
            ) / max(len(style_targets), 1)
            terms = torch.stack(
                [
                    self.content_weight * content,
                    self.style_weight * style,
                    self.tv_weight * total_variation_loss(image),
                ]
            )
            return torch.cat([terms, terms.sum().unsqueeze(0)])
