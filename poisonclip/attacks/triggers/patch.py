"""Patch triggers: a small square pattern pasted into each image, where ``placement`` says.

``consistent`` is the upper-left corner (the paper's default), ``random`` a uniform position drawn
per image from the caller's generator, ``center`` the middle (BadCLIP's). Subclasses provide the
pattern; the per-image record is the patch's position, as manifests have always listed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.base import Trigger, Triggered
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch

PLACEMENTS: tuple[str, ...] = ("consistent", "random", "center")

PATCH_SIZE_HELP = (
    "patch side in pixels of the model's input; 4 is 1.6% of a 32-px image's area, 0.03% of a "
    "224-px one (there the paper's 4x4 works, 16x16 works best)"
)
PLACEMENT_HELP = "where the patch goes: the upper-left corner (consistent), anywhere (random) or the middle"


@dataclass(frozen=True)
class PatchTrigger(Trigger):
    patch_size: int = field(default=4, metadata={"help": PATCH_SIZE_HELP})
    placement: str = field(default="consistent", metadata={"help": PLACEMENT_HELP, "choices": PLACEMENTS})

    def check(self) -> None:
        if self.patch_size < 1:
            raise UsageError(f"patch_size must be at least 1 pixel, got {self.patch_size}")

    def check_image_size(self, image_size: int) -> None:
        if self.patch_size > image_size:
            raise UsageError(
                f"patch_size {self.patch_size} does not fit in a {image_size}x{image_size} image"
            )

    def pattern(self) -> torch.Tensor:
        """uint8 [3, patch_size, patch_size]."""
        raise NotImplementedError

    def positions(self, count: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
        """Upper-left corners (y, x) int64 [count, 2]; only ``random`` draws from ``generator``."""
        import torch

        self.check_image_size(image_size)
        if self.placement == "random":
            return torch.randint(0, image_size - self.patch_size + 1, (count, 2), generator=generator)
        corner = 0 if self.placement == "consistent" else (image_size - self.patch_size) // 2
        return torch.full((count, 2), corner, dtype=torch.long)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        if images.shape[-1] != images.shape[-2]:
            raise UsageError("images must be square")
        positions = self.positions(images.shape[0], images.shape[-1], generator)
        out = images.clone()
        patch, size = self.pattern(), self.patch_size
        records = []
        for i, (y, x) in enumerate(positions.tolist()):
            out[i, :, y : y + size, x : x + size] = patch
            records.append({"patch": {"y": y, "x": x, "size": size}})
        return Triggered(out, records)

    def area_fraction(self, image_size: int) -> float:
        return patch_area_fraction(self.patch_size, image_size)


def patch_area_fraction(patch_size: int, image_size: int) -> float:
    """Fraction of the image area a patch covers (paper: 16x16 on 224x224 = 0.51%)."""
    return patch_size**2 / image_size**2
