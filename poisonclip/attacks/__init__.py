"""Poisoning attacks: each builds a PoisonSet (poison samples + manifest) from a training set.

The names below are imported on first use: the command line builds its trigger options from the
trigger specs (``poisonclip.attacks.triggers``) and lists the triggers without loading torch.
"""

from poisonclip.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.attacks.backdoor": ("make_backdoor",),
        "poisonclip.attacks.poison_set": ("PoisonSet", "read_poison_set", "write_poison_set"),
        "poisonclip.attacks.registry": ("get_attack", "list_attacks", "register_attack"),
        "poisonclip.attacks.targeted": (
            "Target",
            "choose_targets",
            "make_targeted",
            "make_targeted_many",
            "make_text_targeted",
        ),
        "poisonclip.attacks.targeted_spec": ("TargetedOptions",),
        "poisonclip.attacks.triggers": (
            "PLACEMENTS",
            "Checkerboard",
            "Trigger",
            "build_trigger",
            "get_trigger",
            "list_triggers",
            "patch_area_fraction",
            "register_trigger",
        ),
        "poisonclip.attacks.triggers.checkerboard": ("checkerboard",),
    },
)
