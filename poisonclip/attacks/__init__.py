"""Poisoning attacks: each builds a PoisonSet (poison samples + manifest) from a training set."""

from poisonclip.attacks.backdoor import make_backdoor
from poisonclip.attacks.poison_set import PoisonSet, read_poison_set, write_poison_set
from poisonclip.attacks.registry import get_attack, list_attacks, register_attack
from poisonclip.attacks.targeted import (
    Target,
    choose_targets,
    make_targeted,
    make_targeted_many,
    make_text_targeted,
)
from poisonclip.attacks.triggers import (
    PLACEMENTS,
    Checkerboard,
    Trigger,
    build_trigger,
    get_trigger,
    list_triggers,
    patch_area_fraction,
    register_trigger,
)
from poisonclip.attacks.triggers.checkerboard import checkerboard

__all__ = [
    "PLACEMENTS",
    "Checkerboard",
    "PoisonSet",
    "Target",
    "Trigger",
    "build_trigger",
    "checkerboard",
    "choose_targets",
    "get_attack",
    "get_trigger",
    "list_attacks",
    "list_triggers",
    "make_backdoor",
    "make_targeted",
    "make_targeted_many",
    "make_text_targeted",
    "patch_area_fraction",
    "read_poison_set",
    "register_attack",
    "register_trigger",
    "write_poison_set",
]
