"""Filter-then-retrain: drop the top fraction of a detector's ranking and train again from scratch.

This is how a detector becomes ASR, z-score and clean-accuracy numbers. The ranking comes from the
undefended model's view of its own training set; the retrained model uses the same recipe and seed
on what is left. Samples are identified by their stable keys, so the manifest of the poisons that
survive the filter is ``filter_manifest(manifest, kept keys)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.detect.registry import embed_training_set, get_detector, run_detector
from poisonclip.detect.scoring import manifest_keys
from poisonclip.errors import UsageError
from poisonclip.train.fit import train_model
from poisonclip.train.model import get_model_config


@dataclass(frozen=True)
class FilterParams:
    detector: str = "slof"  # any registered detector (poisonclip list detectors)
    fraction: float = 0.05  # of the training set dropped, from the top of the ranking; in (0, 1)

    def __post_init__(self) -> None:
        get_detector(self.detector)  # unknown detector: UsageError
        if not 0 < self.fraction < 1:
            raise UsageError(f"filter fraction must be in (0, 1), got {self.fraction}")


def flag_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """bool [N]: the ⌈fraction · N⌉ highest ``scores`` [N] (ties: the earlier sample first)."""
    count = math.ceil(fraction * len(scores))
    order = torch.sort(-scores, stable=True).indices
    flagged = torch.zeros(len(scores), dtype=torch.bool)
    flagged[order[:count]] = True
    return flagged


def filter_manifest(manifest: Iterable[dict], kept_keys: Iterable[str]) -> list[dict]:
    """The manifest rows of the poisons still in the training set after filtering."""
    kept = set(kept_keys)
    return [row for row in manifest if manifest_keys(row) & kept]


@register_defense("filter", FilterParams, needs=("model", "dataset"))
def filter_then_retrain(context: DefenseContext, params: FilterParams) -> DefenseOutcome:
    """Score the training set with the undefended model, drop the flagged pairs, retrain."""
    start = time.perf_counter()
    model_config = get_model_config(context.train.model)
    inputs = embed_training_set(context.model, context.dataset, model_config, context.early_loss)
    scores = run_detector(params.detector, inputs)
    flagged = flag_top(scores, params.fraction)
    detect_seconds = time.perf_counter() - start
    kept = context.dataset.subset(torch.nonzero(~flagged).squeeze(1))
    if len(kept) < context.train.batch_size:
        raise UsageError(
            f"filtering leaves {len(kept)} pairs, fewer than one batch of {context.train.batch_size}"
        )
    model, _, stats = train_model(kept, context.train, progress=context.progress)
    return DefenseOutcome(
        model=model,
        seconds=detect_seconds + stats.train_seconds,
        record={
            "detect_seconds": detect_seconds,
            "retrain_seconds": stats.train_seconds,
            "num_dropped": int(flagged.sum()),
            "num_kept": len(kept),
        },
        flagged=flagged,
        trained_on=~flagged,
        scores=scores,
    )
