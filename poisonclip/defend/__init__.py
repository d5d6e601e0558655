"""Defenses against poisoning, each a pluggable objective, sampler or starting point for the one
training loop: filter-then-retrain, CleanCLIP, RoCLIP, SafeCLIP. Importing this package registers
them all; ``list_defenses()`` names them and ``apply_defense(spec, context)`` runs one."""

from poisonclip.defend import cleanclip, filtering, roclip, safeclip  # noqa: F401  (registers them)
from poisonclip.defend.cleanclip import CleanClipParams
from poisonclip.defend.filtering import FilterParams, filter_manifest, flag_top
from poisonclip.defend.memory import NearestNeighbourBank
from poisonclip.defend.registry import (
    DefenseContext,
    DefenseOutcome,
    apply_defense,
    get_defense,
    list_defenses,
    parse_defense,
    register_defense,
)
from poisonclip.defend.roclip import RoClipObjective, RoClipParams, named_classes
from poisonclip.defend.safeclip import (
    SafeClipParams,
    full_batches,
    high_similarity_probability,
    run_safeclip,
    safe_split,
)

__all__ = [
    "CleanClipParams",
    "DefenseContext",
    "DefenseOutcome",
    "FilterParams",
    "NearestNeighbourBank",
    "RoClipObjective",
    "RoClipParams",
    "SafeClipParams",
    "apply_defense",
    "filter_manifest",
    "flag_top",
    "full_batches",
    "get_defense",
    "high_similarity_probability",
    "list_defenses",
    "named_classes",
    "parse_defense",
    "register_defense",
    "run_safeclip",
    "safe_split",
]
