"""One model, K targets: zero-shot and linear-probe success of the targeted attack (paper §4.2),
and retrieval success of the text-encoder variant.

The labelled held-out split is divided by ``probe_split`` into a probe-fit half and an evaluation
half; targets must come from the evaluation half (``choose_targets`` on that half does this), and
clean accuracies are measured on the evaluation half without the targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import open_clip
import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.evaluate.embeddings import encode_images, encode_texts
from poisonclip.evaluate.linear_probe import fit_linear_probe, probe_scores, probe_split
from poisonclip.evaluate.metrics import accuracy
from poisonclip.evaluate.targeted import retrieval_ranks, target_ranks
from poisonclip.evaluate.zeroshot import zero_shot_classifier, zero_shot_predict

if TYPE_CHECKING:  # evaluation needs only the targets' fields, not the attack code
    from poisonclip.attacks.targeted import Target
    from poisonclip.train.model import Tokenizer


@dataclass
class TargetedEvaluation:
    """Flat metrics plus one row per target (key, labels, ranks, success under both classifiers)."""

    metrics: dict[str, float]
    per_target: list[dict]


def _class_indices(labels: Sequence[str], classnames: Sequence[str]) -> torch.Tensor:
    missing = sorted({label for label in labels if label not in classnames})
    if missing:
        raise UsageError(f"target labels {missing} are not class names")
    return torch.tensor([list(classnames).index(label) for label in labels])


def evaluate_targeted(
    model: torch.nn.Module,
    targets: Sequence[Target],
    heldout: ImageTextDataset,
    classnames: Sequence[str],
    templates: str | Sequence[str] = "openai",
    tokenizer: Tokenizer | None = None,
    probe_regularization: float = 1.0,
) -> TargetedEvaluation:
    """Rank of y′ for each x′ under the zero-shot classifier and under a linear probe.

    The probe is fit on the embeddings (under ``model``) of the probe-fit half of ``heldout``
    (labelled, clean). Success of a target = rank 0. Metrics: ``zero_shot_success_rate``,
    ``probe_success_rate`` (fractions of the K targets), mean ranks, and the clean
    ``zero_shot_acc`` / ``probe_acc`` on the evaluation half without the targets.
    """
    if not targets:
        raise UsageError("need at least one target")
    if (heldout.labels < 0).any():
        raise UsageError("the held-out split needs a class label for every image")
    fit_idx, eval_idx = probe_split(heldout.labels)
    target_keys = {t.key for t in targets}
    if leaked := sorted(target_keys & {heldout.keys[i] for i in fit_idx.tolist()}):
        raise UsageError(f"targets {leaked[:3]} are in the probe-fit half of the held-out split")
    eval_idx = torch.tensor(
        [i for i in eval_idx.tolist() if heldout.keys[i] not in target_keys], dtype=torch.long
    )
    target_classes = _class_indices([t.label for t in targets], classnames)  # [K]

    classifier = zero_shot_classifier(model, classnames, templates, tokenizer)  # [D, C]
    features = encode_images(model, heldout.images)  # [N, D]
    target_features = encode_images(model, torch.stack([t.image for t in targets]))  # [K, D]
    probe = fit_linear_probe(features[fit_idx], heldout.labels[fit_idx], probe_regularization)

    zs_ranks = target_ranks(target_features @ classifier, target_classes)
    probe_ranks = target_ranks(probe_scores(probe, target_features, len(classnames)), target_classes)
    eval_probe_pred = probe_scores(probe, features[eval_idx], len(classnames)).argmax(dim=1)
    metrics = {
        "zero_shot_success_rate": (zs_ranks == 0).double().mean().item(),
        "probe_success_rate": (probe_ranks == 0).double().mean().item(),
        "zero_shot_mean_rank": zs_ranks.double().mean().item(),
        "probe_mean_rank": probe_ranks.double().mean().item(),
        "zero_shot_acc": accuracy(
            zero_shot_predict(features[eval_idx], classifier), heldout.labels[eval_idx]
        ),
        "probe_acc": accuracy(eval_probe_pred, heldout.labels[eval_idx]),
        "num_targets": len(targets),
        "num_probe_fit": len(fit_idx),
        "num_eval": len(eval_idx),
    }
    per_target = [
        {
            "target_id": k,
            "target_key": t.key,
            "true_label": t.true_label,
            "target_label": t.label,
            "zero_shot_rank": int(zs_ranks[k]),
            "probe_rank": int(probe_ranks[k]),
            "zero_shot_success": bool(zs_ranks[k] == 0),
            "probe_success": bool(probe_ranks[k] == 0),
        }
        for k, t in enumerate(targets)
    ]
    return TargetedEvaluation(metrics, per_target)


def evaluate_text_targets(
    model: torch.nn.Module,
    captions: Sequence[str],
    target_labels: Sequence[str],
    images: ImageTextDataset,
    classnames: Sequence[str],
    tokenizer: Tokenizer | None = None,
) -> TargetedEvaluation:
    """The text-encoder attack: does caption t′ retrieve an image of class y′ first?

    ``images`` is a labelled image set (the retrieval gallery). For each (t′, y′) the rank is the
    number of images of other classes that t′ retrieves before the best image of y′; success = rank 0.
    Run it on the clean model too: that success rate is the attack's chance level.
    """
    if len(captions) != len(target_labels) or not captions:
        raise UsageError("need one target label per target caption, and at least one caption")
    if (images.labels < 0).any():
        raise UsageError("the retrieval images need a class label each")
    targets = _class_indices(target_labels, classnames)
    tokens = (tokenizer or open_clip.tokenize)(list(captions))
    ranks = retrieval_ranks(
        encode_texts(model, tokens), encode_images(model, images.images), images.labels, targets
    )
    metrics = {
        "text_success_rate": (ranks == 0).double().mean().item(),
        "text_mean_rank": ranks.double().mean().item(),
        "num_targets": len(captions),
    }
    per_target = [
        {"caption": c, "target_label": y, "retrieval_rank": int(r), "success": bool(r == 0)}
        for c, y, r in zip(captions, target_labels, ranks.tolist(), strict=True)
    ]
    return TargetedEvaluation(metrics, per_target)
