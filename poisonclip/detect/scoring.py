"""Scoring a detector against the poison manifest: ROC-AUC, PR-AUC, FPR at 95% recall.

Pure functions of scores [N] (higher = more suspicious) and labels bool [N] (True = poison). Ties
share a threshold, as in scikit-learn, whose ``roc_auc_score`` and ``average_precision_score``
these equal. With few poisons AUROC alone is noisy, hence PR-AUC (chance = the poison rate) and
the false-positive rate at the threshold that first catches 95% of the poisons.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def manifest_keys(row: dict) -> set[str]:
    """The keys a poison is known by: its ``poison_key`` (in memory and in ``poisons.csv``) and,
    for poison shards, its ``shard_key``."""
    return {row["poison_key"], *([row["shard_key"]] if "shard_key" in row else [])}


def poison_labels(keys: Sequence[str], manifest: Iterable[dict]) -> torch.Tensor:
    """bool [N]: which of the samples ``keys`` the manifest lists as poisons."""
    poison_keys = set().union(*(manifest_keys(row) for row in manifest))
    return torch.tensor([key in poison_keys for key in keys], dtype=torch.bool)


def _thresholds(scores: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives [T] when flagging everything at or above each distinct score
    (descending), plus a leading (0, 0) for flagging nothing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be one-dimensional and of equal length")
    if y.all() or not y.any():
        raise ValueError("need at least one poison and one clean sample")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of equal scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, tps].astype(np.float64), np.r_[0, fps].astype(np.float64)


def roc_curve(scores: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate [T], true-positive rate [T]) from (0, 0) to (1, 1)."""
    tps, fps = _thresholds(scores, labels)
    return fps / fps[-1], tps / tps[-1]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (trapezoids; equal to the tie-aware Mann–Whitney statistic)."""
    fpr, tpr = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the precision–recall curve as average precision: Σ (Rₜ − Rₜ₋₁) Pₜ (no interpolation)."""
    tps, fps = _thresholds(scores, labels)
    precision = tps[1:] / (tps[1:] + fps[1:])
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall) * precision))


def fpr_at_recall(scores: torch.Tensor, labels: torch.Tensor, recall: float = 0.95) -> float:
    """False-positive rate at the highest threshold that flags at least ``recall`` of the poisons."""
    fpr, tpr = roc_curve(scores, labels)
    return float(fpr[np.argmax(tpr >= recall - 1e-12)])


def roc_on_grid(scores: torch.Tensor, labels: torch.Tensor, grid: np.ndarray) -> list[float]:
    """True-positive rate at each false-positive rate of ``grid`` [G] (the ROC curve's upper
    envelope, interpolated): a fixed-size curve to store and average over seeds."""
    fpr, tpr = roc_curve(scores, labels)
    return np.interp(grid, fpr, tpr).tolist()


def detection_metrics(
    scores: torch.Tensor, labels: torch.Tensor, seed: int = 0, permutations: int = 20
) -> dict[str, float | int]:
    """Flat metrics of one detector's ``scores`` [N] against ``labels`` bool [N].

    ``roc_auc_shuffled`` scores the same ranking against seeded permutations of the labels (mean
    over ``permutations``): the null level (≈ 0.5) that a detector which never reads the manifest
    must reach. One permutation of 100 poisons among 20k pairs spreads by ±0.03; the mean, ±0.007.
    """
    labels = torch.as_tensor(labels, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    shuffled = [labels[torch.randperm(len(labels), generator=generator)] for _ in range(permutations)]
    return {
        "roc_auc": roc_auc(scores, labels),
        "pr_auc": pr_auc(scores, labels),
        "fpr_at_95_recall": fpr_at_recall(scores, labels, 0.95),
        "roc_auc_shuffled": float(np.mean([roc_auc(scores, s) for s in shuffled])),
        "num_poisons": int(labels.sum()),
        "num_samples": len(labels),
    }
