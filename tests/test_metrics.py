import itertools

import pytest
import torch

from poisonclip.evaluate import (
    accuracy,
    attack_success_rate,
    backdoor_zscore,
    pair_similarity_moments,
    sample_pair_similarities,
)


def naive_pair_stats(x):
    x = torch.nn.functional.normalize(x.double(), dim=1)
    sims = [float(x[i] @ x[j]) for i, j in itertools.permutations(range(len(x)), 2)]
    sims = torch.tensor(sims, dtype=torch.float64)
    return sims.mean().item(), sims.std(unbiased=False).item()


@pytest.mark.parametrize(("n", "d", "chunk"), [(2, 3, 8), (17, 5, 4), (40, 8, 7)])
def test_pair_moments_match_the_naive_loop(n, d, chunk):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 3
    mean, std = pair_similarity_moments(x, chunk_size=chunk)
    ref_mean, ref_std = naive_pair_stats(x)
    assert mean == pytest.approx(ref_mean, abs=1e-12)
    assert std == pytest.approx(ref_std, rel=1e-9, abs=1e-7)  # sqrt of a rounding residue


def test_zscore_matches_the_naive_definition():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(30, 6, generator=g)
    patched = torch.randn(25, 6, generator=g) + torch.tensor([3.0, 0, 0, 0, 0, 0])
    clean_mean, clean_std = naive_pair_stats(clean)
    patched_mean, _ = naive_pair_stats(patched)
    expected = (patched_mean - clean_mean) / clean_std
    assert backdoor_zscore(clean, patched) == pytest.approx(expected, rel=1e-9)
    assert backdoor_zscore(clean, patched) > 1
    assert backdoor_zscore(clean, clean) == pytest.approx(0.0, abs=1e-12)


def test_attack_success_rate_ignores_target_class():
    labels = torch.tensor([0, 1, 2, 2, 3])
    preds = torch.tensor([2, 2, 2, 0, 1])
    assert attack_success_rate(preds, labels, target=2) == pytest.approx(2 / 3)
    assert accuracy(preds, labels) == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        attack_success_rate(preds, torch.full((5,), 2), target=2)


def test_sampled_pairs_are_distinct_samples():
    x = torch.eye(5)  # any pair i != j has similarity 0
    sims = sample_pair_similarities(x, 1000, torch.Generator().manual_seed(0))
    assert sims.shape == (1000,) and sims.abs().max() == 0
