"""A poison set: the poison samples themselves plus a manifest that lists every one of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from poisonclip.data.dataset import ImageTextDataset, read_csv_dataset, write_csv_dataset
from poisonclip.data.io import atomic_path

MANIFEST_NAME = "manifest.jsonl"
POISON_CSV_NAME = "poisons.csv"


@dataclass
class PoisonSet:
    """Poison samples (to be *added* to the training set, X' = P ∪ X) and one manifest row each."""

    samples: ImageTextDataset
    manifest: list[dict]

    def __len__(self) -> int:
        return len(self.samples)


def write_poison_set(out_dir: str | Path, poisons: PoisonSet) -> Path:
    """Write poison-only data: ``poisons.csv`` + PNGs under ``images/`` + ``manifest.jsonl``.

    The CSV has open_clip's columns, so ``train.csv`` and ``poisons.csv`` together are the poisoned
    training set; the user's data is never rewritten. Written atomically.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        images = poisons.samples.images.permute(0, 2, 3, 1).numpy()
        names = [Path(row["poison_key"]).stem for row in poisons.manifest]
        write_csv_dataset(tmp / POISON_CSV_NAME, "images", images, poisons.samples.captions, names=names)
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            for row in poisons.manifest:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    return out_dir


def read_poison_set(poison_dir: str | Path) -> PoisonSet:
    poison_dir = Path(poison_dir)
    samples = read_csv_dataset(poison_dir / POISON_CSV_NAME, progress=False)
    manifest = read_manifest(poison_dir / MANIFEST_NAME)
    return PoisonSet(samples, manifest)


def read_manifest(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
