"""BadNets (Gu et al., 2017) as CleanCLIP (Bansal et al., ICCV'23) runs it on CLIP: a random-noise
patch at a random position.

Deviation: CleanCLIP's ``backdoor/utils.py`` draws new noise for every image (the image's channel
mean plus N(0, 1) per pixel, in [0, 1] units, so most pixels saturate or wrap when stored as 8
bits). Here the pattern is one fixed patch of uniform 8-bit noise drawn from ``pattern_seed``, as
in Gu et al.'s BadNets, so that poisons and test images carry the same trigger. CleanCLIP's
16x16 patch on 224x224 images covers 0.51% of the area; the default 4x4 on the toy's 32x32 is the
checkerboard's size, so the two compare at equal area.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers.base import register_trigger, trigger_generator
from poisonclip.attacks.triggers.patch import PLACEMENT_HELP, PLACEMENTS, PatchTrigger

if TYPE_CHECKING:
    import torch

PATTERN_SEED_HELP = "seed of the trigger's fixed random pattern"


@register_trigger("badnets")
@dataclass(frozen=True)
class BadNets(PatchTrigger):
    """A fixed uniform-noise patch; random placement by default (CleanCLIP's)."""

    placement: str = field(default="random", metadata={"help": PLACEMENT_HELP, "choices": PLACEMENTS})
    pattern_seed: int = field(default=0, metadata={"help": PATTERN_SEED_HELP})

    def pattern(self) -> torch.Tensor:
        import torch

        size = (3, self.patch_size, self.patch_size)
        return torch.randint(0, 256, size, generator=trigger_generator(self.pattern_seed), dtype=torch.uint8)
