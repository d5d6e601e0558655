"""A command's trigger options, derived from the trigger specs (no torch import: ``--help`` stays light).

``add_trigger_options`` adds ``--trigger NAME`` and one option per trigger parameter; a parameter
that several triggers share (``patch_size``) is one option (``--patch-size``). Every option defaults
to None, meaning "the chosen trigger's default", so ``trigger_from_args`` can refuse an option the
chosen trigger does not take. Triggers registered before the parser is built get their options too.
"""

from __future__ import annotations

import argparse
import typing
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers import get_trigger, list_triggers, parameter_names
from poisonclip.attacks.triggers.base import build_trigger, parameters
from poisonclip.attacks.triggers.stored import read_poison_trigger
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import dataclasses

    from poisonclip.attacks.triggers import Trigger

DEFAULT_TRIGGER = "checkerboard"  # the paper's
TRIGGER_FROM_HELP = (
    "apply exactly the trigger of this poison set (its trigger.json: name, parameters and a fitted "
    "patch), instead of --trigger and its options"
)


def add_trigger_options(parser: argparse.ArgumentParser, from_poison_set: bool = False) -> None:
    """``--trigger`` and every registered trigger's parameters as options; with ``from_poison_set``
    also ``--trigger-from POISON_DIR``."""
    group = parser.add_argument_group("trigger", "the backdoor trigger, given in pixels of the model's input")
    group.add_argument(
        "--trigger",
        choices=list_triggers(),
        metavar="NAME",
        help=f"one of {', '.join(list_triggers())} (default: {DEFAULT_TRIGGER}); its options below",
    )
    for name, specs in _shared_parameters().items():
        kinds = {typing.get_type_hints(cls)[name] for cls, _ in specs}
        if len(kinds) > 1:
            raise TypeError(f"trigger parameter {name} has different types in different triggers: {kinds}")
        choices = list(dict.fromkeys(c for _, f in specs for c in f.metadata.get("choices", ()))) or None
        defaults = {}
        for cls, f in specs:
            defaults.setdefault(repr(f.default), []).append(cls.name)
        used = "; ".join(f"{value} for {', '.join(names)}" for value, names in defaults.items())
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kinds.pop(),
            choices=choices,
            help=f"{specs[0][1].metadata.get('help', '')} (default {used})".replace("%", "%%"),
        )
    if from_poison_set:
        group.add_argument("--trigger-from", metavar="POISON_DIR", help=TRIGGER_FROM_HELP)


def trigger_from_args(args: argparse.Namespace) -> Trigger:
    """The trigger the options of ``add_trigger_options`` describe (``UsageError`` for an option
    the chosen trigger does not take)."""
    given = {
        name: getattr(args, name) for name in _shared_parameters() if getattr(args, name, None) is not None
    }
    if getattr(args, "trigger_from", None):
        if args.trigger or given:
            flags = ["--trigger"] * bool(args.trigger) + [_flag(name) for name in given]
            raise UsageError(f"--trigger-from applies the poison set's own trigger: drop {', '.join(flags)}")
        return read_poison_trigger(args.trigger_from)
    name = args.trigger or DEFAULT_TRIGGER
    takes = parameter_names(name)
    if unknown := [key for key in given if key not in takes]:
        options = ", ".join(map(_flag, takes)) or "none"
        raise UsageError(
            f"{', '.join(map(_flag, unknown))}: not an option of trigger {name!r} (its options: {options})"
        )
    return build_trigger(name, given)


def _shared_parameters() -> dict[str, list[tuple[type, dataclasses.Field]]]:
    """Parameter name -> (trigger class, field) of every registered trigger that has it."""
    shared: dict[str, list] = {}
    for name in list_triggers():
        cls = get_trigger(name)
        for f in parameters(cls):
            shared.setdefault(f.name, []).append((cls, f))
    return shared


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"
