"""Backdoor z-score: the Gram identity (O(N·d²)) vs exact all-pairs similarities (O(N²·d)).

Baseline: what a user who wants the statistic over every pair writes — float64 unit embeddings,
one matmul per block of rows (S_block = X_block Xᵀ, [block, N]), then the sum and the sum of
squares of S over i ≠ j (the diagonal subtracted), for the clean and the patched set. It computes
both triangles, as the straightforward code does (symmetry would halve it, and the Gram side
alike through a symmetric rank-k update). Same float64 arithmetic as ``backdoor_zscore``, so the
two agree to 1e-9 relative.

Also: the Gram identity at N = 200,000 against its floor, one bare float64 ``X.T @ X`` on the
same (already normalised) X, and its time at three sizes (the scaling table).

    .venv/bin/python bench/bench_zscore.py        # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse

import torch
from timing import machine, median_seconds, seconds

from poisonclip.evaluate.metrics import backdoor_zscore, pair_similarity_moments


def blockwise_moments(features: torch.Tensor, block: int = 2048) -> tuple[float, float]:
    """Mean and std of the cosine similarity over pairs i ≠ j from every S_ij (the baseline)."""
    x = torch.nn.functional.normalize(features.double(), dim=1)
    n = x.shape[0]
    total, total_sq = 0.0, 0.0
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T  # [block, N]
        total += sims.sum().item()
        total_sq += torch.linalg.vector_norm(sims).item() ** 2  # one pass, no [block, N] temporary
    diag = x.square().sum(dim=1)  # S_ii, ≈ 1
    pairs = n * (n - 1)
    mean = (total - diag.sum().item()) / pairs
    mean_sq = (total_sq - diag.square().sum().item()) / pairs
    return mean, (mean_sq - mean * mean) ** 0.5


def blockwise_zscore(clean: torch.Tensor, patched: torch.Tensor) -> float:
    clean_mean, clean_std = blockwise_moments(clean)
    patched_mean, _ = blockwise_moments(patched)
    return (patched_mean - clean_mean) / clean_std


def bare_gram_seconds(features: torch.Tensor, repeats: int) -> float:
    """The floor: one float64 X.T @ X on X already normalised (its 0.8 GB freed on return)."""
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    return median_seconds(lambda: unit.T @ unit, repeats)


def embeddings(n: int, d: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, patched) float32 [n, d] on ``device``: clean embeddings around 20 class prototypes
    (clean-pair similarity 0.03 ± 0.15), patched ones pulled towards one trigger direction
    (z ≈ 2.3). The timings do not depend on the values."""
    g = torch.Generator(device=device).manual_seed(seed)
    prototypes = torch.randn(20, d, generator=g, device=device)
    classes = torch.randint(20, (n,), generator=g, device=device)
    clean = prototypes[classes] + 0.7 * torch.randn(n, d, generator=g, device=device)
    return clean, clean + 0.9 * torch.randn(1, d, generator=g, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="samples for the baseline comparison")
    parser.add_argument("--n-large", type=int, default=200_000, help="samples for the floor comparison")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    clean, patched = embeddings(args.n, args.dim, seed=0)
    fast_z = backdoor_zscore(clean, patched)
    fast = median_seconds(lambda: backdoor_zscore(clean, patched), args.repeats)
    exact_z = blockwise_zscore(clean, patched)
    exact = seconds(lambda: blockwise_zscore(clean, patched))  # seconds each: once is enough
    rel = abs(fast_z - exact_z) / abs(exact_z)

    large, _ = embeddings(args.n_large, args.dim, seed=1)
    floor = bare_gram_seconds(large, args.repeats)
    sizes = (args.n_large // 100, args.n_large // 10, args.n_large)
    scaling = [median_seconds(lambda k=k: pair_similarity_moments(large[:k]), args.repeats) for k in sizes]
    at_large = scaling[-1]
    print(
        f"z-score [{machine()}]: N={args.n:,} d={args.dim}: Gram identity {fast:.3f} s (z={fast_z:.4f}), "
        f"exact block-wise all pairs {exact:.2f} s (z={exact_z:.4f}), relative difference {rel:.1e}; "
        f"moments of one set at N={', '.join(f'{k:,}' for k in sizes)}: "
        f"{', '.join(f'{s:.3f}' for s in scaling)} s; at N={args.n_large:,} float64 X.T@X alone "
        f"{floor:.2f} s, Gram identity / floor {at_large / floor:.2f}; speed-up vs exact {exact / fast:.1f}x"
    )


if __name__ == "__main__":
    main()
