"""``poisonclip list``: model configs, presets, attacks, triggers, detectors or defenses, one a line."""

from __future__ import annotations

import argparse
import importlib

from poisonclip.cli import options

# what -> (module, function) naming them. Presets, models and triggers are listed without loading
# torch; attacks, triggers, detectors and defenses are the names their modules register when imported.
LISTINGS = {
    "models": ("poisonclip.train.config", "list_model_configs"),
    "presets": ("poisonclip.train.config", "list_presets"),
    "attacks": ("poisonclip.attacks", "list_attacks"),
    "triggers": ("poisonclip.attacks.triggers", "list_triggers"),
    "detectors": ("poisonclip.detect", "list_detectors"),
    "defenses": ("poisonclip.defend", "list_defenses"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "list", run, "list model configs, presets, attacks, triggers, detectors or defenses"
    )
    p.add_argument("what", choices=tuple(LISTINGS))


def run(args: argparse.Namespace) -> int:
    module, function = LISTINGS[args.what]
    print("\n".join(getattr(importlib.import_module(module), function)()))
    return 0
