"""SIG (Barni et al., ICIP 2019): a horizontal sinusoidal signal added to the whole image,
x'(i, j) = x(i, j) + Δ·sin(2π·j·f / S) for every row i and channel, with Barni et al.'s Δ = 20
(8-bit levels) and f = 6 periods across the image width S.

Deviation from CleanCLIP (Bansal et al., ICCV'23), which lists SIG among its triggers: its
``backdoor/utils.py`` builds the signal with Δ = 60/255 and f = 6 and then blends it as its
Blended trigger does, 0.2·signal + 0.8·image (an effective amplitude of 12 levels and the image
darkened by 20%); here the signal is added as Barni et al. define it. Clipped and rounded to 8 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.base import Trigger, register_trigger, to_pixels
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch

    from poisonclip.attacks.triggers.base import Triggered


@register_trigger("sig")
@dataclass(frozen=True)
class Sig(Trigger):
    delta: float = field(default=20.0, metadata={"help": "amplitude of the sinusoid in 8-bit levels"})
    frequency: int = field(default=6, metadata={"help": "periods of the sinusoid across the image width"})

    def check(self) -> None:
        if not 0 < self.delta <= 255:
            raise UsageError(f"delta must be in (0, 255], got {self.delta}")
        if self.frequency < 1:
            raise UsageError(f"frequency must be at least 1, got {self.frequency}")

    def signal(self, image_size: int) -> torch.Tensor:
        """float32 [S]: the value added to column j."""
        import torch

        columns = torch.arange(image_size, dtype=torch.float64)
        return (self.delta * torch.sin(2 * math.pi * columns * self.frequency / image_size)).float()

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        return to_pixels(images.float() + self.signal(images.shape[-1]))
