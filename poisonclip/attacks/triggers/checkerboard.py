"""The paper's trigger (Carlini & Terzis §3.3, §5.1.3): a black-and-white checkerboard patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.base import register_trigger
from poisonclip.attacks.triggers.patch import PatchTrigger
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch


@register_trigger("checkerboard")
@dataclass(frozen=True)
class Checkerboard(PatchTrigger):
    """1-pixel cells, white in the upper-left one; 4x4 at the upper-left corner by default."""

    def pattern(self) -> torch.Tensor:
        return checkerboard(self.patch_size)


def checkerboard(patch_size: int) -> torch.Tensor:
    """uint8 [3, patch_size, patch_size] with 1-pixel cells, white in the upper-left cell."""
    import torch

    if patch_size < 1:
        raise UsageError(f"patch_size must be at least 1 pixel, got {patch_size}")
    ij = torch.arange(patch_size)
    cells = (ij[:, None] + ij[None, :]) % 2 == 0
    return (cells.to(torch.uint8) * 255).expand(3, -1, -1).contiguous()
