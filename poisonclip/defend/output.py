"""What a defense run leaves on disk: the defended checkpoint and a record of the defense."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from poisonclip.data.io import atomic_path
from poisonclip.defend.filtering import filter_manifest
from poisonclip.defend.registry import DefenseOutcome
from poisonclip.detect.scoring import detection_metrics, poison_labels
from poisonclip.train.checkpoint import save_checkpoint
from poisonclip.train.config import TrainConfig

CHECKPOINT_DIR = "checkpoint"
RECORD_NAME = "defense.json"
REMAINING_NAME = "remaining_manifest.jsonl"


def flagged_summary(outcome: DefenseOutcome, labels) -> dict[str, float | int]:
    """How the pairs a defense flagged (dropped, "risky") split into poisons and clean pairs, and
    how its detector ranks the poisons; ``labels`` bool [N] (True = poison, from the manifest)."""
    if outcome.flagged is None:
        return {}
    summary = {
        "poisons_flagged": int((outcome.flagged & labels).sum()),
        "clean_flagged": int((outcome.flagged & ~labels).sum()),
        "num_poisons": int(labels.sum()),
    }
    if outcome.scores is not None:
        summary.update({f"detection_{k}": v for k, v in detection_metrics(outcome.scores, labels).items()})
    return summary


def write_defense(
    out_dir: str | Path,
    name: str,
    params: object,
    outcome: DefenseOutcome,
    model_config: dict,
    train: TrainConfig,
    keys: Sequence[str] | None = None,
    manifest: list[dict] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint/`` (loadable by ``poisonclip evaluate``) and ``defense.json`` (the
    defense, its parameters, cost and record); given the training set's ``keys`` [N] and the poison
    ``manifest``, also how the flagged pairs split and, where the defense dropped pairs,
    ``remaining_manifest.jsonl``: the poisons the defended model was still trained on. Atomic."""
    out_dir = Path(out_dir)
    record = {
        "defense": name,
        "params": dataclasses.asdict(params),
        "seconds": outcome.seconds,
        **outcome.record,
    }
    remaining = None
    if manifest is not None and keys is not None:
        labels = poison_labels(keys, manifest)
        record.update(flagged_summary(outcome, labels))
        if outcome.trained_on is not None:
            trained_on = outcome.trained_on.tolist()
            remaining = filter_manifest(
                manifest, [k for k, kept in zip(keys, trained_on, strict=True) if kept]
            )
            record["poisons_remaining"] = len(remaining)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_checkpoint(tmp / CHECKPOINT_DIR, outcome.model, model_config, train, meta={"defense": name})
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if remaining is not None:
            (tmp / REMAINING_NAME).write_text(
                "".join(json.dumps(row, sort_keys=True) + "\n" for row in remaining)
            )
    return out_dir
