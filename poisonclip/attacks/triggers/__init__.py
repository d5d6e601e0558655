"""Backdoor triggers, one file each, registered by name (``base.register_trigger``).

Importing this package registers the built-in ones. No module here imports torch at import time:
the CLI derives its trigger options from the specs while building its parser.
"""

# The built-in triggers register themselves when imported.
from poisonclip.attacks.triggers import badclip, badnets, blended, checkerboard, nashville, sig, wanet  # noqa: F401
from poisonclip.attacks.triggers.base import (
    FitContext,
    Trigger,
    Triggered,
    build_trigger,
    get_trigger,
    list_triggers,
    parameter_names,
    register_trigger,
    trigger_from_record,
)
from poisonclip.attacks.triggers.checkerboard import Checkerboard
from poisonclip.attacks.triggers.patch import PLACEMENTS, PatchTrigger, patch_area_fraction

__all__ = [
    "PLACEMENTS",
    "Checkerboard",
    "FitContext",
    "PatchTrigger",
    "Trigger",
    "Triggered",
    "build_trigger",
    "get_trigger",
    "list_triggers",
    "parameter_names",
    "patch_area_fraction",
    "register_trigger",
    "trigger_from_record",
]
