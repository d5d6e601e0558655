"""The backdoor trigger: a black-and-white checkerboard patch (paper §3.3, §5.1.3)."""

from __future__ import annotations

from typing import Literal

import torch

from poisonclip.errors import UsageError

Placement = Literal["consistent", "random"]
PLACEMENTS: tuple[str, ...] = ("consistent", "random")


def checkerboard(patch_size: int) -> torch.Tensor:
    """uint8 [3, patch_size, patch_size] with 1-pixel cells, white in the upper-left cell."""
    if patch_size < 1:
        raise UsageError(f"patch_size must be at least 1 pixel, got {patch_size}")
    ij = torch.arange(patch_size)
    cells = (ij[:, None] + ij[None, :]) % 2 == 0
    return (cells.to(torch.uint8) * 255).expand(3, -1, -1).contiguous()


def patch_positions(
    count: int,
    image_size: int,
    patch_size: int,
    placement: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Upper-left corners (y, x) int64 [count, 2]: all (0, 0) if consistent, uniform if random."""
    check_patch(image_size, patch_size, placement)
    if placement == "consistent":
        return torch.zeros(count, 2, dtype=torch.long)
    return torch.randint(0, image_size - patch_size + 1, (count, 2), generator=generator)


def check_patch(image_size: int, patch_size: int, placement: str) -> None:
    if placement not in PLACEMENTS:
        raise UsageError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not 1 <= patch_size <= image_size:
        raise UsageError(f"patch_size {patch_size} does not fit in a {image_size}x{image_size} image")


def apply_patch(images: torch.Tensor, positions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Return a copy of ``images`` (uint8 [N, 3, H, W]) with the checkerboard at ``positions`` [N, 2]."""
    if images.shape[-1] != images.shape[-2]:
        raise UsageError("images must be square")
    check_patch(images.shape[-1], patch_size, "consistent")
    out = images.clone()
    patch = checkerboard(patch_size)
    for i, (y, x) in enumerate(positions.tolist()):
        out[i, :, y : y + patch_size, x : x + patch_size] = patch
    return out


def patch_area_fraction(patch_size: int, image_size: int) -> float:
    """Fraction of the image area the patch covers (paper: 16x16 on 224x224 = 0.51%)."""
    return patch_size**2 / image_size**2
