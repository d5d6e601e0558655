"""What detection (and a defense that ranks pairs) starts from: the training set as trained on,
the poison labels its manifests give, and each detector's settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.data.manifest import read_manifest
from poisonclip.data.reading import read_datasets
from poisonclip.detect.registry import detector_params
from poisonclip.detect.scoring import poison_labels
from poisonclip.errors import UsageError


@dataclass(frozen=True)
class TrainingSet:
    """The training set in training order; with manifests, which pairs are poisons."""

    dataset: ImageTextDataset
    labels: torch.Tensor | None = None  # bool [N]: listed as a poison by ``manifest``
    manifest: list[dict] | None = None  # the rows of every manifest given


def read_training_set(
    data: Sequence[str],
    manifests: Sequence[str] | None,
    image_size: int,
    csv: CsvFormat = DEFAULT_CSV,
    progress: bool = True,
) -> TrainingSet:
    """``data`` (CSVs or shards, in order) as trained on, and its poison labels from ``manifests``.
    Sample keys must identify samples, and the manifests must name at least one of them."""
    dataset = read_datasets(data, image_size, csv, progress)
    if len(set(dataset.keys)) != len(dataset):
        duplicate = next(k for i, k in enumerate(dataset.keys) if k in dataset.keys[:i])
        raise UsageError(f"sample key {duplicate!r} appears twice in --data; keys must identify samples")
    if not manifests:
        return TrainingSet(dataset)
    for path in manifests:
        if not Path(path).is_file():
            raise UsageError(f"manifest not found: {path}")
    manifest = [row for path in manifests for row in read_manifest(path)]
    labels = poison_labels(dataset.keys, manifest)
    if not labels.any():
        raise UsageError(
            "no sample of --data is listed in --manifest (pass the poison set's poisons.csv too)"
        )
    return TrainingSet(dataset, labels, manifest)


def detector_settings(
    names: Sequence[str],
    *,
    k: int | None,
    lid_k: int | None,
    space: str,
    reference: str,
    reference_batch_size: int,
    reshuffles: int,
) -> dict[str, dict]:
    """Each detector's keyword parameters, of those it takes: the neighbour count (``lid_k`` for
    LID, ``k`` for the others; None: the detector's default), the embedding ``space``, and the
    ``reference`` set (a shuffled batch of ``reference_batch_size``, ``reshuffles`` times, or all)."""
    settings = {}
    for name in names:
        accepted, params = detector_params(name), {}
        neighbours = lid_k if name == "lid" else k
        if "k" in accepted and neighbours is not None:
            params["k"] = neighbours
        if "space" in accepted:
            params["space"] = space
        if "reference" in accepted:
            params["reference"] = reference
        if "normalize" in accepted:  # Huang et al.'s batch protocol: raw features; the all-pairs
            params["normalize"] = reference == "all"  # variant as measured before: unit norm
        if "batch_size" in accepted:
            params.update(batch_size=reference_batch_size, reshuffles=reshuffles)
        settings[name] = params
    return settings
