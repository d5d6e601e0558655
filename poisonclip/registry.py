"""Name → entry tables filled by decorators at import time (timm's ``_registry.py``, in small).

Attacks, detectors, defenses and sweep runners each keep one ``Registry``; a new one is a decorated
function in its own file, and ``names()`` lets tests parametrize over all of them.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from poisonclip.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "attack", "detector", ...
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is the user's error (CLI exit code 2)."""
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]
