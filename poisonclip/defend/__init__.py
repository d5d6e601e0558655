"""Defenses against poisoning, each a pluggable objective, sampler or starting point for the one
training loop: filter-then-retrain, CleanCLIP, RoCLIP, SafeCLIP. ``list_defenses()`` names them and
``apply_defense(spec, context)`` runs one. The names below load on first use: listing the defenses
imports no torch, and a defense's module is imported when it is first looked up."""

from poisonclip.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.defend.cleanclip": ("CleanClipParams",),
        "poisonclip.defend.filtering": ("FilterParams", "filter_manifest", "flag_top"),
        "poisonclip.defend.memory": ("NearestNeighbourBank",),
        "poisonclip.defend.registry": (
            "DefenseContext",
            "DefenseOutcome",
            "apply_defense",
            "get_defense",
            "list_defenses",
            "parse_defense",
            "register_defense",
        ),
        "poisonclip.defend.roclip": ("RoClipObjective", "RoClipParams", "named_classes"),
        "poisonclip.defend.safeclip": (
            "SafeClipParams",
            "full_batches",
            "high_similarity_probability",
            "run_safeclip",
            "safe_split",
        ),
    },
)
