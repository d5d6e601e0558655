"""How a poison set lies on disk, and its manifest: one JSON object per poison, one a line.

The poison sets themselves are built and written by ``poisonclip.attacks``; the names are here so
that data readers (the trigger-resolution check) can recognise a poison set without importing the
attacks.
"""

from __future__ import annotations

import json
from pathlib import Path

from poisonclip.errors import UsageError

MANIFEST_NAME = "manifest.jsonl"
TRIGGER_NAME = "trigger.json"  # a backdoor set's trigger: name, parameters and fitted state
POISON_CSV_NAME = "poisons.csv"
SHARD_DIR = "shards"
POISON_KEY_PREFIX = "poison"  # keeps poison shard keys apart from img2dataset's numeric keys


def is_backdoor_row(row: dict) -> bool:
    """A backdoor manifest row: a trigger (or, before triggers were plugins, a patch) is listed."""
    return "trigger" in row or "patch" in row


def read_manifest(path: str | Path) -> list[dict]:
    """The rows of a ``manifest.jsonl``: one JSON object with a ``poison_key`` a line (else UsageError)."""
    try:  # decoding happens while the file is iterated: the whole read is in here
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err}), so not a manifest.jsonl") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise UsageError(f"{path}, line {number}: not JSON ({err})") from err
        if not isinstance(row, dict) or "poison_key" not in row:
            raise UsageError(f"{path}, line {number}: a manifest row needs a poison_key")
        rows.append(row)
    return rows


def write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
