"""The attack registry: a new attack is one decorated function in one file (and, if built in, its
line in ``BUILTIN_ATTACKS``, so that listing the attacks loads no torch)."""

from __future__ import annotations

from collections.abc import Callable

from poisonclip.registry import Registry

BUILTIN_ATTACKS = {
    "backdoor": "poisonclip.attacks.backdoor",
    "targeted": "poisonclip.attacks.targeted",
    "targeted-text": "poisonclip.attacks.targeted",
}

_ATTACKS: Registry[Callable] = Registry("attack", BUILTIN_ATTACKS)

register_attack = _ATTACKS.register
list_attacks = _ATTACKS.names
get_attack = _ATTACKS.get
