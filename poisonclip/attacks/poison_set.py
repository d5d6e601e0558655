"""A poison set: the poison samples themselves plus a manifest that lists every one of them.

Poisons are *added* to the training set (X' = P ∪ X) and written on their own, so the user's data
is never rewritten and the cost is O(poisons): as a CSV (``poisons.csv`` + PNGs) or as webdataset
shards that open_clip_train reads beside the original ones (``original::poisons``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.attacks.triggers import Trigger
from poisonclip.attacks.triggers.stored import read_poison_trigger, write_poison_trigger
from poisonclip.data.dataset import (
    CAPTION_COLUMN,
    CSV_SEPARATOR,
    IMAGE_COLUMN,
    ImageTextDataset,
    read_csv_dataset,
    write_csv_dataset,
)
from poisonclip.data.io import atomic_path
from poisonclip.data.manifest import (
    MANIFEST_NAME,
    POISON_CSV_NAME,
    POISON_KEY_PREFIX,
    SHARD_DIR,
    is_backdoor_row,
    read_manifest,
    write_manifest,
)
from poisonclip.errors import UsageError

if TYPE_CHECKING:  # webdataset and pandas load only when shards are written
    from poisonclip.data.wds import ShardSet


@dataclass
class PoisonSet:
    """Poison samples (to be *added* to the training set, X' = P ∪ X) and one manifest row each;
    backdoor poisons also carry their trigger, fitted as applied (to paste the same at evaluation)."""

    samples: ImageTextDataset
    manifest: list[dict]
    trigger: Trigger | None = None

    def __len__(self) -> int:
        return len(self.samples)


def write_poison_set(out_dir: str | Path, poisons: PoisonSet) -> Path:
    """Write poison-only data: ``poisons.csv`` + PNGs under ``poison/`` + ``manifest.jsonl``.

    The CSV has open_clip's columns, so ``train.csv`` and ``poisons.csv`` together are the poisoned
    training set; the user's data is never rewritten. Each PNG is stored at its manifest
    ``poison_key`` (``poison/000000.png``), so a sample read from the CSV has the key the manifest
    lists (detectors and filters are scored and applied by key). Written atomically.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        images = poisons.samples.images.permute(0, 2, 3, 1).numpy()
        names = [Path(row["poison_key"]).stem for row in poisons.manifest]
        keys = write_csv_dataset(
            tmp / POISON_CSV_NAME, POISON_KEY_PREFIX, images, poisons.samples.captions, names=names
        )
        if keys != [row["poison_key"] for row in poisons.manifest]:
            raise ValueError("poison keys must be 'poison/<name>.png' to be stored at their own path")
        _write_manifest(tmp, poisons, poisons.manifest)
    return out_dir


def write_poison_shards(
    out_dir: str | Path,
    poisons: PoisonSet,
    samples_per_shard: int = 10_000,
    image_format: str = "png",
) -> ShardSet:
    """Write poison-only webdataset shards (img2dataset layout) under ``out_dir/shards`` + the manifest.

    Each manifest row gains ``shard_key`` (the sample's key in the shards). Returns the
    ``ShardSet``; its ``url`` joins the original data as ``original::url``. Written atomically.
    """
    from poisonclip.data.wds import ShardSet, brace_url, write_shards

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        metadata = [{"poison_key": row["poison_key"]} for row in poisons.manifest]
        shards = write_shards(
            tmp / SHARD_DIR, poisons.samples, samples_per_shard, image_format, metadata, POISON_KEY_PREFIX
        )
        manifest = [{**row, "shard_key": key} for row, key in zip(poisons.manifest, shards.keys, strict=True)]
        _write_manifest(tmp, poisons, manifest)
    return ShardSet(brace_url(out_dir / SHARD_DIR, shards.num_shards), shards.num_shards, shards.keys)


def write_merged_csv(
    path: str | Path,
    original_csv: str | Path,
    poison_dir: str | Path,
    sep: str = CSV_SEPARATOR,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
) -> int:
    """One CSV with the rows of ``original_csv`` and then the poisons, for tools that read one file.

    Written with the original's separator and column names (image and caption columns only);
    image paths become absolute, so the file works from any directory. O(dataset rows), no image
    is read. Written atomically; returns the number of rows.
    """
    original_csv, poison_csv = Path(original_csv), Path(poison_dir) / POISON_CSV_NAME
    rows = _csv_rows(original_csv, sep, image_column, caption_column)
    rows += _csv_rows(poison_csv, CSV_SEPARATOR, IMAGE_COLUMN, CAPTION_COLUMN)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow([image_column, caption_column])
        writer.writerows(rows)
    return len(rows)


def _csv_rows(path: Path, sep: str, image_column: str, caption_column: str) -> list[list[str]]:
    """[image path made absolute, caption] per row of an open_clip CSV."""
    if not path.is_file():
        raise UsageError(f"dataset file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # as read_csv_dataset: a BOM is no text
        reader = csv.DictReader(f, delimiter=sep)
        if not {image_column, caption_column} <= set(reader.fieldnames or ()):
            raise UsageError(
                f"{path}: needs columns {image_column!r} and {caption_column!r} (separator {sep!r})"
            )
        base = path.parent.resolve()
        return [[str(base / row[image_column]), row[caption_column]] for row in reader]


def read_poison_set(poison_dir: str | Path) -> PoisonSet:
    """Read a poison set written by ``write_poison_set`` or ``write_poison_shards``."""
    poison_dir = Path(poison_dir)
    if (poison_dir / POISON_CSV_NAME).is_file():
        samples = read_csv_dataset(poison_dir / POISON_CSV_NAME, progress=False)
    else:
        from poisonclip.data.wds import read_shard_dataset

        samples = read_shard_dataset(
            sorted(str(p) for p in (poison_dir / SHARD_DIR).glob("*.tar")), progress=False
        )
    manifest = read_manifest(poison_dir / MANIFEST_NAME)
    trigger = read_poison_trigger(poison_dir) if manifest and is_backdoor_row(manifest[0]) else None
    return PoisonSet(samples, manifest, trigger)


def _write_manifest(out_dir: Path, poisons: PoisonSet, rows: list[dict]) -> None:
    """``manifest.jsonl`` (``rows``), and ``trigger.json`` for poisons that carry a trigger."""
    write_manifest(out_dir / MANIFEST_NAME, rows)
    if poisons.trigger is not None:
        write_poison_trigger(out_dir, poisons.trigger)
