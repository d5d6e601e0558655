"""Metrics as pure functions on tensors: accuracy, attack success, backdoor z-score."""

from __future__ import annotations

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions`` [N] equal to ``labels`` [N]."""
    return (predictions == labels).double().mean().item()


def attack_success_rate(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """Fraction of samples whose true class is not ``target`` that are predicted as ``target``.

    ``predictions`` and ``labels`` int [N]. With predictions on *patched* images this is the
    backdoor ASR; on the same images unpatched it is the natural rate (the ASR's chance level).
    """
    mask = labels != target
    if not mask.any():
        raise ValueError("no samples outside the target class")
    return (predictions[mask] == target).double().mean().item()


def pair_similarity_moments(features: torch.Tensor, chunk_size: int = 8192) -> tuple[float, float]:
    """Mean and standard deviation of the cosine similarity over all pairs i ≠ j.

    ``features`` [N, D] (normalised here, in float64). Exact, in O(N·D²) time and O(chunk·D + D²)
    memory, with S = X Xᵀ on unit rows: Σ_{i≠j} S_ij = ‖Σ_i x_i‖² − N  and
    Σ_{i≠j} S_ij² = ‖XᵀX‖_F² − N, accumulated in float64 over chunks of rows.

    Its cost is one float64 ``XᵀX`` (the floor, bench/bench_zscore.py): each chunk is converted
    and normalised in place in one reused buffer (fresh float64 chunks cost page faults and extra
    passes), and a column of ones appended to it makes the same matmul yield Σ_i x_i (row D).
    """
    n, d = features.shape
    if n < 2:
        raise ValueError("need at least two samples")
    rows = min(chunk_size, n)
    buffer = torch.empty(rows, d + 1, dtype=torch.float64, device=features.device)  # [chunk, D + 1]
    buffer[:, d] = 1.0
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=features.device)  # [[XᵀX, Σx], [Σxᵀ, N]]
    for start in range(0, n, rows):
        chunk = buffer[: min(rows, n - start)]
        x = chunk[:, :d]
        x.copy_(features[start : start + rows])
        x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        gram.addmm_(chunk.T, chunk)
    pairs = n * (n - 1)
    total = gram[d, :d]
    mean = ((total @ total).item() - n) / pairs
    mean_sq = (gram[:d, :d].square().sum().item() - n) / pairs
    return mean, max(mean_sq - mean * mean, 0.0) ** 0.5


def backdoor_zscore(clean_features: torch.Tensor, patched_features: torch.Tensor) -> float:
    """Backdoor z-score (paper §5.1, Definition 1).

    ``clean_features`` [N, D] and ``patched_features`` [M, D] embed the same non-target images
    without and with the trigger. z = (mean patched-pair cosine − mean clean-pair cosine) / std of
    clean-pair cosines, over pairs i ≠ j. The paper's formula writes Var⁻¹, but its text
    ("standard deviations") and its numbers use the standard deviation, as we do.
    """
    clean_mean, clean_std = pair_similarity_moments(clean_features)
    patched_mean, _ = pair_similarity_moments(patched_features)
    return (patched_mean - clean_mean) / clean_std


def sample_pair_similarities(
    features: torch.Tensor, num_pairs: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cosine similarities float32 [num_pairs] of random pairs i ≠ j of ``features`` [N, D]."""
    n = features.shape[0]
    x = torch.nn.functional.normalize(features.float(), dim=1)
    i = torch.randint(n, (num_pairs,), generator=generator)
    j = (i + torch.randint(1, n, (num_pairs,), generator=generator)) % n  # j ≠ i
    return (x[i] * x[j]).sum(dim=1)


def _pair_similarity_chunks(features: torch.Tensor, chunk_size: int):
    """Yield (rows i, cosine similarities [c, N]) over row chunks of ``features`` [N, D]."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    for start in range(0, x.shape[0], chunk_size):
        yield torch.arange(start, min(start + chunk_size, x.shape[0])), x[start : start + chunk_size] @ x.T


def pair_similarity_histogram(
    features: torch.Tensor, edges: torch.Tensor, chunk_size: int = 1024
) -> list[int]:
    """Counts [B] of the cosine similarity over all unordered pairs i < j of ``features`` [N, D].

    ``edges`` float [B + 1], increasing; values outside [edges[0], edges[-1]] are clipped into the
    end bins. Exact (every pair), in O(chunk_size · N) memory: the binned form of the paper's
    Fig 3 right.
    """
    counts = torch.zeros(len(edges) - 1, dtype=torch.long)
    for rows, sims in _pair_similarity_chunks(features, chunk_size):
        upper = torch.arange(features.shape[0])[None, :] > rows[:, None]  # j > i
        counts += torch.bincount(_bin_index(sims[upper], edges), minlength=len(counts))
    return counts.tolist()


def same_label_by_similarity(
    features: torch.Tensor,
    labels: torch.Tensor,
    edges: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[list[int], list[int]]:
    """Paper Fig 3 left, binned: over all pairs i < j of ``features`` [N, D] with ``labels`` int [N],
    the number of pairs [B] and of pairs with equal labels [B] per cosine-similarity bin.

    Their ratio estimates P(same label | similarity); ``labels`` may be true classes or a model's
    predictions ("classified the same").
    """
    pairs = torch.zeros(len(edges) - 1, dtype=torch.long)
    same = torch.zeros_like(pairs)
    for rows, sims in _pair_similarity_chunks(features, chunk_size):
        upper = torch.arange(features.shape[0])[None, :] > rows[:, None]
        index = _bin_index(sims[upper], edges)
        equal = (labels[rows][:, None] == labels[None, :])[upper]
        pairs += torch.bincount(index, minlength=len(pairs))
        same += torch.bincount(index[equal], minlength=len(pairs))
    return pairs.tolist(), same.tolist()


def _bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each value [M] for ``edges`` [B + 1]; out-of-range values go to the end bins."""
    return (torch.bucketize(values, edges.to(values.dtype), right=True) - 1).clamp(0, len(edges) - 2)
