"""Poisoning attacks: each builds a PoisonSet (poison samples + manifest) from a training set."""

from poisonclip.attacks.backdoor import make_backdoor
from poisonclip.attacks.patch import (
    PLACEMENTS,
    apply_patch,
    checkerboard,
    patch_area_fraction,
    patch_positions,
)
from poisonclip.attacks.poison_set import PoisonSet, read_poison_set, write_poison_set
from poisonclip.attacks.registry import get_attack, list_attacks, register_attack
from poisonclip.attacks.targeted import (
    Target,
    choose_targets,
    make_targeted,
    make_targeted_many,
    make_text_targeted,
)

__all__ = [
    "PLACEMENTS",
    "PoisonSet",
    "Target",
    "apply_patch",
    "checkerboard",
    "choose_targets",
    "get_attack",
    "list_attacks",
    "make_backdoor",
    "make_targeted",
    "make_targeted_many",
    "make_text_targeted",
    "patch_area_fraction",
    "patch_positions",
    "read_poison_set",
    "register_attack",
    "write_poison_set",
]
