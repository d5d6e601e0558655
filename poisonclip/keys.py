"""Result keys: configurations hashed to the keys under which results are stored and found again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

ADDED_LATER = "hash_omits_default"  # dataclass field metadata key; see ``config_dict``


def added_later(cls: Any) -> set[str]:
    """The fields of dataclass ``cls`` (or of an instance's class) that a result key leaves out at
    their default: declared with ``metadata={ADDED_LATER: True}``, or named in the class attribute
    ``ADDED_LATER_FIELDS`` (for fields a class inherits from a spec that other classes hash
    whole, e.g. ``TargetedOptions``)."""
    named = set(getattr(cls, "ADDED_LATER_FIELDS", ()))
    fields = dataclasses.fields(cls)
    if unknown := named - {f.name for f in fields}:
        raise TypeError(f"ADDED_LATER_FIELDS names no field: {sorted(unknown)}")  # a typo would rehash
    return {f.name for f in fields if f.metadata.get(ADDED_LATER) or f.name in named}


def config_dict(obj: Any) -> dict:
    """``dataclasses.asdict(obj)`` as hashed into result keys.

    A field added later (``added_later``) is left out while it holds its default, so adding an
    option to a config keeps the keys (and the stored results) of every existing configuration
    valid: a results database resumes instead of retraining.
    """
    out = dataclasses.asdict(obj)
    later = added_later(obj)
    for f in dataclasses.fields(obj):
        if f.name in later and getattr(obj, f.name) == f.default:
            del out[f.name]
    return out


def config_hash(obj: object) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
