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

__all__ = [
    "PLACEMENTS",
    "PoisonSet",
    "apply_patch",
    "checkerboard",
    "get_attack",
    "list_attacks",
    "make_backdoor",
    "patch_area_fraction",
    "patch_positions",
    "read_poison_set",
    "register_attack",
    "write_poison_set",
]
