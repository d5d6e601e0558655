import pytest
import torch

from poisonclip.evaluate.linear_probe import probe_backdoor_metrics, probe_split
from poisonclip.evaluate.suite import BackdoorEvaluation, backdoor_linear_probe


def test_probe_backdoor_metrics_on_separable_embeddings():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 5  # three well-separated classes in 3-D
    fit_labels = torch.arange(3).repeat(20)
    fit = centres[fit_labels] + 0.1 * torch.randn(60, 3, generator=g)
    test_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    test = centres[test_labels] + 0.1 * torch.randn(6, 3, generator=g)
    nontarget = test_labels != 2
    # "patched" images: one of the four non-target images moves onto the target class
    patched = test[nontarget].clone()
    patched[0] = centres[2]
    metrics = probe_backdoor_metrics(fit, fit_labels, test, test_labels, patched, target=2, num_classes=3)
    assert metrics["probe_acc"] == 1.0
    assert metrics["probe_asr"] == pytest.approx(1 / 4)
    assert metrics["probe_natural_rate"] == 0.0
    assert metrics["probe_num_fit"] == 60


def test_backdoor_linear_probe_fits_one_half_and_scores_the_other_halfs_patched_images():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4) * 5
    labels = torch.arange(4).repeat(10)[torch.randperm(40, generator=g)]
    features = centres[labels] + 0.1 * torch.randn(40, 4, generator=g)
    target = 3
    nontarget = torch.nonzero(labels != target).squeeze(1)
    # patched images of the non-target rows: rows with an odd index become the target class
    patched = features[nontarget].clone()
    patched[nontarget % 2 == 1] = centres[target]
    evaluation = BackdoorEvaluation(
        {}, features[nontarget], patched, labels[nontarget], labels[nontarget], features, labels, target
    )
    metrics = backdoor_linear_probe(evaluation, num_classes=4)
    # naive reference: the evaluation half's non-target rows, looked up one by one
    fit_idx, eval_idx = probe_split(labels)
    rows = [int(i) for i in eval_idx if labels[i] != target]
    expected_asr = sum(i % 2 == 1 for i in rows) / len(rows)
    assert metrics["probe_asr"] == pytest.approx(expected_asr)
    assert 0 < expected_asr < 1  # the two halves differ, so a misaligned lookup would fail
    assert metrics["probe_acc"] == 1.0 and metrics["probe_natural_rate"] == 0.0
    assert metrics["probe_num_fit"] == len(fit_idx) == 20
