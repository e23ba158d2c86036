"""Any picture as the style: style vectors from paintings, blended, bound into a network.

The arbitrary-style network (see `arbitrary.py`) is conditioned on a 100-number style vector
that its predictor computes from a square picture. Several paintings blend in style-vector
space; `strength` below 1 moves the vector towards the photo's own (Magenta's way), so the
photo keeps more of its look without the washed-out result of blending pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stylize.engine.arbitrary import style_vector
from stylize.engine.settings import DEFAULT_STYLE_SIZE, MAX_STYLE_SIZE, MIN_STYLE_SIZE
from stylize.engine.stylenet import StyleNet
from stylize.errors import StylizeError


class PaintingStyle:
    """The blended style vector of some paintings, ready to bind for each photo.

    `predictor` and `network` are the arbitrary-style pair; `paintings` are (1, 3, H, W) images
    in [0, 1] and `mix` their weights (summing to 1). The predictor runs in float32 on
    `device`: one small image per painting, where precision matters more than time.
    """

    def __init__(
        self,
        predictor: nn.Module,
        network: nn.Module,
        paintings: Sequence[Tensor],
        mix: Tensor,
        *,
        device: torch.device,
        style_size: int = DEFAULT_STYLE_SIZE,
    ) -> None:
        if not MIN_STYLE_SIZE <= style_size <= MAX_STYLE_SIZE:
            raise StylizeError(
                f"style size must be from {MIN_STYLE_SIZE} to {MAX_STYLE_SIZE}, got {style_size}"
            )
        self.predictor = predictor.to(device=device, dtype=torch.float32)
        self.network = network
        self.device = device
        self.style_size = style_size
        vectors = torch.cat([self.vector_of(painting) for painting in paintings])
        self.vector = (mix.to(vectors)[:, None] * vectors).sum(0)

    def vector_of(self, image: Tensor) -> Tensor:
        """The (1, 100) style vector of one image (1, 3, H, W) in [0, 1]."""
        with torch.inference_mode():
            return style_vector(self.predictor, image.to(self.device), self.style_size).cpu()

    def network_for(self, content: Tensor | None = None, strength: float = 1.0) -> StyleNet:
        """The network that stylizes `content` at `strength` (1: the paintings' style)."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"strength must be between 0 and 1, got {strength}")
        vector = self.vector
        if strength < 1.0:
            if content is None:
                raise StylizeError("a strength below 1 needs the photo's own style")
            vector = torch.lerp(self.vector_of(content)[0], vector, strength)
        return self.network.bind(vector)
