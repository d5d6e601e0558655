"""Blended (Chen et al., 2017) as CleanCLIP (Bansal et al., ICCV'23) runs it on CLIP: the image
α-blended with a pattern over its whole area, x' = (1 - α)·x + α·pattern, α = 0.2.

Deviation: CleanCLIP's ``backdoor/utils.py`` draws a new uniform-noise pattern for every image;
here the pattern is fixed (uniform noise from ``pattern_seed`` at the model's input size, or the
image file ``pattern`` resized to it), as in Chen et al., so poisons and test images carry the same
trigger. The result is rounded to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.badnets import PATTERN_SEED_HELP
from poisonclip.attacks.triggers.base import Trigger, register_trigger, to_pixels, trigger_generator
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch

    from poisonclip.attacks.triggers.base import Triggered


@register_trigger("blended")
@dataclass(frozen=True)
class Blended(Trigger):
    alpha: float = field(default=0.2, metadata={"help": "blend weight of the pattern, in (0, 1]"})
    pattern: str = field(
        default="",
        metadata={"help": "an image file to blend in (resized to the model's input); empty: noise"},
    )
    pattern_seed: int = field(default=0, metadata={"help": PATTERN_SEED_HELP})

    def check(self) -> None:
        if not 0 < self.alpha <= 1:
            raise UsageError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.pattern and not Path(self.pattern).is_file():
            raise UsageError(f"blended pattern image not found: {self.pattern}")

    def blend_pattern(self, image_size: int) -> torch.Tensor:
        """float32 [3, S, S] in [0, 255]."""
        import torch

        if not self.pattern:
            return torch.rand(3, image_size, image_size, generator=trigger_generator(self.pattern_seed)) * 255
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.pattern) as im:
                resized = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        except (OSError, UnidentifiedImageError) as err:
            raise UsageError(f"cannot read the blended pattern image {self.pattern}: {err}") from err
        return (
            torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
            .view(image_size, image_size, 3)
            .permute(2, 0, 1)
            .float()
        )

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        mixed = (1 - self.alpha) * images.float() + self.alpha * self.blend_pattern(images.shape[-1])
        return to_pixels(mixed)
