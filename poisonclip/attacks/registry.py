"""The attack registry: a new attack is one decorated function in one file."""

from __future__ import annotations

from collections.abc import Callable

from poisonclip.registry import Registry

_ATTACKS: Registry[Callable] = Registry("attack")


def register_attack(name: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable) -> Callable:
        _ATTACKS.add(name, fn)
        return fn

    return decorator


list_attacks = _ATTACKS.names
get_attack = _ATTACKS.get
