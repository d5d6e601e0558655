"""A small registry of attacks (timm-style): a new attack is one decorated function in one file."""

from __future__ import annotations

from collections.abc import Callable

from poisonclip.errors import UsageError

_ATTACKS: dict[str, Callable] = {}


def register_attack(name: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable) -> Callable:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        _ATTACKS[name] = fn
        return fn

    return decorator


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> Callable:
    if name not in _ATTACKS:
        raise UsageError(f"unknown attack {name!r}; available: {', '.join(list_attacks())}")
    return _ATTACKS[name]
