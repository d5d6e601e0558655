"""Targeted-poisoning metrics (paper §4.2) as pure functions on tensors.

An attack on target (x′, y′) succeeds when the downstream classifier puts y′ first for x′: the
zero-shot classifier (scores = f(x′) · class weights) or a linear probe (scores = its decision
function). The rank of y′ (0 = top-1) says how close a failed attack came. The success rate of a
configuration is the fraction of (target, seed) attacks that succeed, with the standard deviation
of the per-seed rates beside it (the paper's shaded band).
"""

from __future__ import annotations

import math

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank int64 [K] of class ``targets[k]`` in row k of ``scores`` float [K, C]: the number of
    classes scored strictly higher (0 = top-1; ties count in the attack's favour)."""
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"need scores [K, C] and targets [K], got {tuple(scores.shape)}, {tuple(targets.shape)}"
        )
    target_scores = scores.gather(1, targets.long().unsqueeze(1))  # [K, 1]
    return (scores > target_scores).sum(dim=1)


def retrieval_ranks(
    text_features: torch.Tensor,
    image_features: torch.Tensor,
    image_labels: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """For the text-encoder attack: rank int64 [M] of the best image of class ``targets[m]`` among
    all images retrieved by caption m (0 = the top-1 retrieved image is of the target class).

    ``text_features`` [M, D] and ``image_features`` [N, D] unit-norm, ``image_labels`` int [N],
    ``targets`` int [M]; every target class needs at least one image.
    """
    similarity = text_features @ image_features.T  # [M, N]
    is_target = image_labels.unsqueeze(0) == targets.long().unsqueeze(1)  # [M, N]
    if not is_target.any(dim=1).all():
        raise ValueError("a target class has no image in the retrieval set")
    best_target = similarity.masked_fill(~is_target, -math.inf).amax(dim=1, keepdim=True)  # [M, 1]
    return (similarity.masked_fill(is_target, -math.inf) > best_target).sum(dim=1)


def success_rate(successes: torch.Tensor) -> dict[str, float]:
    """Success rate of (target, seed) attacks from ``successes`` bool [S, K] (S seeds, K targets each).

    ``success_rate`` is the fraction of all S·K attacks that succeed; ``success_rate_std`` the
    sample standard deviation over seeds of the per-seed rates (NaN for a single seed).
    """
    if successes.ndim != 2 or successes.numel() == 0:
        raise ValueError(f"need successes [S, K] with S, K >= 1, got {tuple(successes.shape)}")
    per_seed = successes.double().mean(dim=1)  # [S]
    std = per_seed.std(unbiased=True).item() if len(per_seed) > 1 else math.nan
    return {
        "success_rate": successes.double().mean().item(),
        "success_rate_std": std,
        "num_seeds": float(successes.shape[0]),
        "num_targets": float(successes.shape[1]),
    }
