"""Caption search: the paper's caption-set construction (§3.1) reads captions only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from poisonclip.errors import UsageError


def search_captions(captions: Sequence[str], label: str, word_boundary: bool = True) -> list[int]:
    """Indices of captions that contain ``label`` (case-insensitive).

    With ``word_boundary`` the label must stand as a whole word ("ring" matches "a red ring" but
    not "earring"); without it this is the paper's plain substring search.
    """
    if not label.strip():
        raise UsageError("the target label is empty")
    escaped = re.escape(label.strip())
    pattern = re.compile(rf"\b{escaped}\b" if word_boundary else escaped, re.IGNORECASE)
    return [i for i, caption in enumerate(captions) if pattern.search(caption)]
