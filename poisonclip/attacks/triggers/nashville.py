"""Nashville: a fixed colour transform, the Instagram-style filter Huang et al. (ICLR'25) list
among their triggers, computed as pilgram's ``nashville`` (the CSSgram recipe) does, in torch:

1. darken with (247, 176, 153) (per-channel minimum), blended in at 0.56;
2. lighten with (0, 70, 150) (per-channel maximum), blended in at 0.4;
3. sepia 0.2, contrast 1.2 (W3C filter-effects matrices, as pilgram's ``css`` module);
4. brightness 1.05 and colour (saturation) 1.2, as PIL's ``ImageEnhance`` computes them
   (colour: away from the ITU-R 601 luma L = 0.299 R + 0.587 G + 0.114 B).

Deviation: PIL truncates to 8 bits after every step; here the steps run in float and are clipped to
[0, 255] after each, rounded once at the end (on random images: at most 4 levels apart, 1-2 on
average; tests/test_triggers.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.base import Trigger, register_trigger, to_pixels

if TYPE_CHECKING:
    import torch

    from poisonclip.attacks.triggers.base import Triggered


@register_trigger("nashville")
@dataclass(frozen=True)
class Nashville(Trigger):
    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        return to_pixels(nashville(images.float()))


def nashville(x: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [0, 255] -> the filtered values, same shape and range."""
    import torch

    def colour(*rgb: float) -> torch.Tensor:
        return torch.tensor(rgb).view(1, 3, 1, 1)

    def mix(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
        return (a + weight * (b - a)).clamp(0, 255)

    def matrix(m: list[list[float]], y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,njhw->nihw", torch.tensor(m), y).clamp(0, 255)

    x = mix(x, torch.minimum(x, colour(247, 176, 153)), 0.56)
    x = mix(x, torch.maximum(x, colour(0, 70, 150)), 0.4)
    s = 1 - 0.2  # sepia(0.2): pilgram's matrix with amount = 1 - 0.2
    x = matrix(
        [
            [0.393 + 0.607 * s, 0.769 - 0.769 * s, 0.189 - 0.189 * s],
            [0.349 - 0.349 * s, 0.686 + 0.314 * s, 0.168 - 0.168 * s],
            [0.272 - 0.272 * s, 0.534 - 0.534 * s, 0.131 + 0.869 * s],
        ],
        x,
    )
    x = (x * 1.2 + 255 * (-0.5 * 1.2 + 0.5)).clamp(0, 255)  # contrast(1.2)
    x = (x * 1.05).clamp(0, 255)  # brightness 1.05: a blend with black
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return mix(luma, x, 1.2)  # colour 1.2: a blend away from grey
