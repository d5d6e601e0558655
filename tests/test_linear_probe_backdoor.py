import pytest
import torch

from poisonclip.evaluate.linear_probe import probe_backdoor_metrics


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
