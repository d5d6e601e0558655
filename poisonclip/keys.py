"""Result keys: configurations hashed to the keys under which results are stored and found again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

ADDED_LATER = "hash_omits_default"  # dataclass field metadata key; see ``config_dict``


def config_dict(obj: Any) -> dict:
    """``dataclasses.asdict(obj)`` as hashed into result keys.

    A field declared with ``metadata={ADDED_LATER: True}`` is left out while it holds its default, so
    adding an option to a config keeps the keys (and the stored results) of every existing
    configuration valid: a results database resumes instead of retraining.
    """
    out = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if f.metadata.get(ADDED_LATER) and getattr(obj, f.name) == f.default:
            del out[f.name]
    return out


def config_hash(obj: object) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
