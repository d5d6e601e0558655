"""WaNet (Nguyen & Tran, ICLR 2021): the image resampled through a fixed, smooth warping field.

As WaNet's code builds it (and CleanCLIP's ``backdoor/utils.py`` copies it): a k×k grid of
uniform random offsets in [-1, 1], divided by its mean absolute value, upsampled bicubically to the
image size S; the sampling grid is the identity plus s·offsets/S (normalised coordinates, clamped
to [-1, 1]); ``grid_sample`` (bilinear, align_corners) resamples the image. Defaults are WaNet's
k = 4 and s = 0.5, which keep the warp small and smooth.

Deviations: CleanCLIP uses k = 224 and s = 1 on 224-pixel images (an offset drawn per pixel, not
a smooth field); WaNet's training-time "noise mode" (random warps kept at their true labels) has
no place in data poisoning and is left out. The result is rounded to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.badnets import PATTERN_SEED_HELP
from poisonclip.attacks.triggers.base import Trigger, register_trigger, to_pixels, trigger_generator
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch

    from poisonclip.attacks.triggers.base import Triggered


@register_trigger("wanet")
@dataclass(frozen=True)
class WaNet(Trigger):
    grid_size: int = field(default=4, metadata={"help": "WaNet's k: control points per side of the warp"})
    strength: float = field(default=0.5, metadata={"help": "WaNet's s: how far the warp moves pixels"})
    pattern_seed: int = field(default=0, metadata={"help": PATTERN_SEED_HELP})

    def check(self) -> None:
        if self.grid_size < 2:
            raise UsageError(f"grid_size must be at least 2, got {self.grid_size}")
        if self.strength <= 0:
            raise UsageError(f"strength must be positive, got {self.strength}")

    def sampling_grid(self, image_size: int) -> torch.Tensor:
        """float32 [1, S, S, 2]: where each output pixel samples the input (x, y in [-1, 1])."""
        import torch
        import torch.nn.functional as F

        k, generator = self.grid_size, trigger_generator(self.pattern_seed)
        offsets = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field_ = F.interpolate(offsets, size=image_size, mode="bicubic", align_corners=True).permute(
            0, 2, 3, 1
        )
        axis = torch.linspace(-1, 1, image_size)
        rows, columns = torch.meshgrid(axis, axis, indexing="ij")
        identity = torch.stack((columns, rows), dim=2)[None]
        return (identity + self.strength * field_ / image_size).clamp(-1, 1)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        import torch.nn.functional as F

        grid = self.sampling_grid(images.shape[-1]).expand(len(images), -1, -1, -1)
        return to_pixels(F.grid_sample(images.float(), grid, align_corners=True))
