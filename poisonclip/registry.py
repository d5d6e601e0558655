"""Name → entry tables filled by decorators at import time (timm's ``_registry.py``, in small).

Attacks, detectors, defenses and sweep runners each keep one ``Registry``; a new one is a decorated
function in its own file, and ``names()`` lets tests parametrize over all of them. A registry may
know its built-in entries' names before their modules are imported (``builtins``: name → the module
that registers it): listing them then loads nothing heavy, and the first lookup of a name imports
its module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from poisonclip.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind  # what an entry is, for messages: "attack", "detector", ...
        self.builtins = dict(builtins or {})
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the function it decorates as the entry ``name``."""

        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted({*self._entries, *self.builtins})

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is the user's error (CLI exit code 2)."""
        if name not in self._entries and name in self.builtins:
            importlib.import_module(self.builtins[name])
            if name not in self._entries:
                raise RuntimeError(f"{self.builtins[name]} does not register the {self.kind} {name!r}")
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]
