"""One model, one test set: clean zero-shot accuracy and the backdoor metrics, following the toy
protocol (ASR and z-score over the test images whose true class is not the target)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.evaluate.embeddings import encode_images
from poisonclip.evaluate.linear_probe import probe_backdoor_metrics, probe_split
from poisonclip.evaluate.metrics import (
    accuracy,
    attack_success_rate,
    backdoor_zscore,
    pair_similarity_moments,
)
from poisonclip.evaluate.zeroshot import zero_shot_classifier, zero_shot_predict

if TYPE_CHECKING:
    from poisonclip.attacks.triggers import Trigger
    from poisonclip.train.model import Tokenizer


@dataclass
class CleanEvaluation:
    """Clean zero-shot metrics and what the backdoor metrics build on."""

    metrics: dict[str, float]
    classifier: torch.Tensor  # float32 [D, C]: the zero-shot class weights
    features: torch.Tensor  # [N, D]: every clean test image
    predictions: torch.Tensor  # int64 [N]: their zero-shot classes


def evaluate_clean(
    model: torch.nn.Module,
    test: ImageTextDataset,
    classnames: Sequence[str],
    templates: str | Sequence[str] = "openai",
    tokenizer: Tokenizer | None = None,
) -> CleanEvaluation:
    """Zero-shot top-1 accuracy on clean ``test`` images (``templates``: a set name or a file)."""
    if (test.labels < 0).any():
        raise UsageError("the test set needs a class label for every image")
    classifier = zero_shot_classifier(model, classnames, templates, tokenizer)
    features = encode_images(model, test.images)
    predictions = zero_shot_predict(features, classifier)
    metrics = {"zero_shot_acc": accuracy(predictions, test.labels), "num_test": len(test)}
    return CleanEvaluation(metrics, classifier, features, predictions)


@dataclass
class BackdoorEvaluation:
    """Flat metrics plus the embeddings behind them (for similarity plots)."""

    metrics: dict[str, float]
    clean_features: torch.Tensor  # [N_nontarget, D]
    patched_features: torch.Tensor  # [N_nontarget, D]
    labels: torch.Tensor  # int64 [N_nontarget]: true classes of those images
    clean_predictions: torch.Tensor  # int64 [N_nontarget]: zero-shot classes of the clean images
    test_features: torch.Tensor  # [N, D]: every clean test image, target class included
    test_labels: torch.Tensor  # int64 [N]
    target: int  # index of the target class


def evaluate_backdoor(
    model: torch.nn.Module,
    test: ImageTextDataset,
    classnames: Sequence[str],
    target_label: str,
    trigger: Trigger,
    seed: int = 0,
    templates: str | Sequence[str] = "openai",
    tokenizer: Tokenizer | None = None,
) -> BackdoorEvaluation:
    """Zero-shot accuracy on clean ``test`` images, and ASR / natural rate / z-score for ``trigger``.

    The trigger (fitted, where it is fitted) is applied to the test images at the model's input size,
    its per-image randomness (e.g. random patch positions) seeded by ``seed``. No augmentation at
    evaluation.
    """
    if target_label not in classnames:
        raise UsageError(f"target label {target_label!r} is not a class name")
    target = list(classnames).index(target_label)
    clean = evaluate_clean(model, test, classnames, templates, tokenizer)
    classifier, clean_features, clean_pred = clean.classifier, clean.features, clean.predictions

    nontarget = test.labels != target
    generator = torch.Generator().manual_seed(seed)
    patched_features = encode_images(model, trigger.apply(test.images[nontarget], generator).images)
    patched_pred = zero_shot_predict(patched_features, classifier)
    nontarget_labels = test.labels[nontarget]

    clean_mean, clean_std = pair_similarity_moments(clean_features[nontarget])
    patched_mean, patched_std = pair_similarity_moments(patched_features)
    metrics = {
        "zero_shot_acc": clean.metrics["zero_shot_acc"],
        "asr": attack_success_rate(patched_pred, nontarget_labels, target),
        "natural_rate": attack_success_rate(clean_pred[nontarget], nontarget_labels, target),
        "zscore": backdoor_zscore(clean_features[nontarget], patched_features),
        "clean_pair_mean": clean_mean,
        "clean_pair_std": clean_std,
        "patched_pair_mean": patched_mean,
        "patched_pair_std": patched_std,
        "num_test": len(test),
        "num_nontarget": int(nontarget.sum()),
    }
    return BackdoorEvaluation(
        metrics,
        clean_features[nontarget],
        patched_features,
        nontarget_labels,
        clean_pred[nontarget],
        clean_features,
        test.labels,
        target,
    )


def backdoor_linear_probe(evaluation: BackdoorEvaluation, num_classes: int) -> dict[str, float]:
    """The backdoor seen through a linear probe (paper §4.3, Fig 2 right), from one evaluation.

    The labelled test split is halved by ``probe_split``: the probe is fit on the clean embeddings
    of one half and measured on the other (clean accuracy ``probe_acc``; ``probe_asr`` and
    ``probe_natural_rate`` over that half's non-target images, patched as in the evaluation).
    """
    labels = evaluation.test_labels
    fit_idx, eval_idx = probe_split(labels)
    nontarget_rows = torch.nonzero(labels != evaluation.target).squeeze(1)  # rows of patched_features
    patched = evaluation.patched_features[torch.isin(nontarget_rows, eval_idx)]
    features = evaluation.test_features
    return probe_backdoor_metrics(
        features[fit_idx], labels[fit_idx], features[eval_idx], labels[eval_idx], patched,
        evaluation.target, num_classes,
    )  # fmt: skip
