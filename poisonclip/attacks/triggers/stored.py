"""A backdoor poison set's trigger on disk: ``trigger.json`` beside its manifest (name, parameters
and fitted state), read back to apply exactly the same trigger at evaluation.

Here rather than in ``poison_set`` so that the command line's ``--trigger-from`` reads it without
importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from poisonclip.attacks.triggers.base import Trigger, build_trigger, trigger_from_record
from poisonclip.data.manifest import MANIFEST_NAME, TRIGGER_NAME, is_backdoor_row, read_manifest
from poisonclip.errors import UsageError


def write_poison_trigger(out_dir: Path, trigger: Trigger) -> None:
    """``trigger.json`` in the poison set ``out_dir``."""
    (out_dir / TRIGGER_NAME).write_text(json.dumps(trigger.record(), indent=2) + "\n")


def read_poison_trigger(poison_dir: str | Path) -> Trigger:
    """The trigger a backdoor poison set carries, exactly as applied: its ``trigger.json``, or for a
    set written before triggers were plugins, the checkerboard its manifest rows describe."""
    poison_dir = Path(poison_dir)
    if (poison_dir / TRIGGER_NAME).is_file():
        try:
            record = json.loads((poison_dir / TRIGGER_NAME).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise UsageError(f"{poison_dir / TRIGGER_NAME}: not JSON ({err})") from err
        return trigger_from_record(record)
    if not (poison_dir / MANIFEST_NAME).is_file():
        raise UsageError(f"{poison_dir}: not a poison set (no {MANIFEST_NAME})")
    rows = read_manifest(poison_dir / MANIFEST_NAME)
    if not rows or not is_backdoor_row(rows[0]):
        raise UsageError(f"{poison_dir}: not a backdoor poison set (its manifest lists no trigger)")
    first = rows[0]
    if "trigger" in first:
        return build_trigger(first["trigger"], first["trigger_params"])
    return build_trigger(
        "checkerboard", {"patch_size": first["patch"]["size"], "placement": first["placement"]}
    )
