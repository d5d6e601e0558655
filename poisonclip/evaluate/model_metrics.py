"""One trained model on one labelled test set, as flat metrics: clean zero-shot accuracy, a
backdoor's ASR and z-score (optionally through a linear probe), or a targeted attack's x′."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from poisonclip.attacks.dedup import image_hash
from poisonclip.attacks.targeted import Target
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.evaluate.embeddings import encode_images
from poisonclip.evaluate.linear_probe import probe_backdoor_metrics
from poisonclip.evaluate.suite import evaluate_backdoor, evaluate_clean
from poisonclip.evaluate.targeted_suite import evaluate_targeted
from poisonclip.train.model import tokenizer_for

Templates = Sequence[str | Callable[[str], str]]


def model_metrics(
    model: torch.nn.Module,
    model_config: dict,
    test: ImageTextDataset,
    classnames: Sequence[str],
    templates: Templates,
    backdoor: Mapping[str, Any] | None = None,
    probe_train: ImageTextDataset | None = None,
) -> dict[str, float]:
    """Clean zero-shot metrics, or with ``backdoor`` (``evaluate_backdoor``'s keyword arguments:
    target label, trigger, seed) the backdoor's too. With ``probe_train`` (labelled with
    the same classes), also a linear probe fit on its embeddings: probe_acc, and with a backdoor
    probe_asr and probe_natural_rate."""
    tokenizer = tokenizer_for(model_config)
    if backdoor is None:
        clean = evaluate_clean(model, test, classnames, templates, tokenizer)
        metrics, features, patched, target = clean.metrics, clean.features, None, None
    else:
        evaluation = evaluate_backdoor(
            model, test, classnames, **backdoor, templates=templates, tokenizer=tokenizer
        )
        metrics, features = evaluation.metrics, evaluation.test_features
        patched, target = evaluation.patched_features, evaluation.target
    if probe_train is not None:
        fit_features = encode_images(model, probe_train.images)
        metrics.update(
            probe_backdoor_metrics(
                fit_features, probe_train.labels, features, test.labels, patched, target, len(classnames)
            )
        )
    return metrics


def target_image_metrics(
    model: torch.nn.Module,
    model_config: dict,
    target: Target,
    test: ImageTextDataset,
    classnames: Sequence[str],
    templates: Templates,
) -> dict[str, float | int | str | bool]:
    """A targeted attack's metrics for one x′ (``target``): the rank of its label y′ under the
    zero-shot classifier and under a linear probe fit on half of ``test`` (the other half gives
    the clean accuracies). Copies of x′ in ``test`` are left out of both halves: x′ must neither
    fit the probe nor count as a clean image."""
    digest = image_hash(target.image)
    others = [i for i in range(len(test)) if image_hash(test.images[i]) != digest]
    evaluation = evaluate_targeted(
        model, [target], test.subset(others), classnames, templates, tokenizer_for(model_config)
    )
    row = evaluation.per_target[0]
    return {
        **{k: v for k, v in evaluation.metrics.items() if k != "num_targets"},
        "target_copies_left_out_of_test": len(test) - len(others),
        **{k: row[k] for k in ("target_key", "target_label", "zero_shot_rank", "probe_rank")},
        "zero_shot_success": row["zero_shot_success"],
        "probe_success": row["probe_success"],
    }
