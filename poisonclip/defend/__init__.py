"""Defenses against poisoning, each a pluggable objective, sampler or starting point for the one
training loop: filter-then-retrain, CleanCLIP, RoCLIP, SafeCLIP. Importing this package registers
them all; ``list_defenses()`` names them and ``apply_defense(spec, context)`` runs one."""

from poisonclip.defend import cleanclip, filtering, roclip, safeclip  # noqa: F401  (registers them)
from poisonclip.defend.cleanclip import CleanClipParams
from poisonclip.defend.filtering import FilterParams, filter_manifest, flag_top
from poisonclip.defend.registry import (
    DefenseContext,
    DefenseOutcome,
    apply_defense,
    get_defense,
    list_defenses,
    parse_defense,
    register_defense,
)
from poisonclip.defend.roclip import CaptionPool, RoClipObjective, RoClipParams
from poisonclip.defend.safeclip import (
    SafeClipObjective,
    SafeClipParams,
    high_similarity_probability,
    safe_split,
)

__all__ = [
    "CaptionPool",
    "CleanClipParams",
    "DefenseContext",
    "DefenseOutcome",
    "FilterParams",
    "RoClipObjective",
    "RoClipParams",
    "SafeClipObjective",
    "SafeClipParams",
    "apply_defense",
    "filter_manifest",
    "flag_top",
    "get_defense",
    "high_similarity_probability",
    "list_defenses",
    "parse_defense",
    "register_defense",
    "safe_split",
]
