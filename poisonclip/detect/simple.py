"""Detectors without a k-NN search: CLIP score, Isolation Forest, ABL-style loss tracking."""

from __future__ import annotations

import numpy as np
import torch

from poisonclip.detect.registry import DetectorInputs, register_detector
from poisonclip.errors import UsageError


@register_detector("clip-score")
def clip_score(inputs: DetectorInputs) -> torch.Tensor:
    """Negated image–caption cosine similarity: pairs the model finds ill-matched rank first."""
    image = torch.nn.functional.normalize(inputs.image.double(), dim=1)
    return -(image * torch.nn.functional.normalize(inputs.text.double(), dim=1)).sum(dim=1)


@register_detector("isolation-forest")
def isolation_forest(
    inputs: DetectorInputs, n_estimators: int = 100, reference: str = "batch",
    batch_size: int = 128, reshuffles: int = 3, seed: int = 0,
) -> torch.Tensor:  # fmt: skip
    """scikit-learn's Isolation Forest; the score is the negated ``score_samples`` (higher =
    isolated in fewer random splits = more anomalous).

    ``reference="batch"`` (Huang et al.'s ``IsolationForestDetector``): one forest per batch, fitted
    on the batch's 2B image and caption embeddings (raw), scoring the B images; averaged over
    ``reshuffles`` as the k-NN detectors (``poisonclip.detect.knn``). ``"all"``: poisonclip's earlier
    variant, one forest on all N joint vectors [image, caption] (unit norm, [N, 2D]). Their forest is
    unseeded; ours is seeded per batch.
    """
    from sklearn.ensemble import IsolationForest

    from poisonclip.detect.knn import REFERENCES, embeddings_in, over_batches

    if reference not in REFERENCES:
        raise UsageError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if reference == "all":
        joint = embeddings_in(inputs, "joint", True).double().numpy()
        forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(joint)
        return -torch.from_numpy(forest.score_samples(joint))
    image, text = inputs.image.double().numpy(), inputs.text.double().numpy()
    forests = iter(range(seed, seed + 2**31))  # a new seed for every batch's forest

    def score_batch(ids: torch.Tensor) -> torch.Tensor:
        pool = np.concatenate([image[ids], text[ids]])
        forest = IsolationForest(n_estimators=n_estimators, random_state=next(forests)).fit(pool)
        return -torch.from_numpy(forest.score_samples(image[ids]))

    return over_batches(len(inputs), score_batch, batch_size, reshuffles, seed)


@register_detector("loss-tracking")
def loss_tracking(inputs: DetectorInputs) -> torch.Tensor:
    """ABL-style: the negated per-sample CLIP loss, averaged over eval-mode passes after each of the
    first training epochs (``LossTracker``; poisons are learned fast, so their loss drops first).
    A sample that was never scored gets the median score."""
    if inputs.early_loss is None:
        raise UsageError(
            "loss-tracking needs the per-sample losses of the first training epochs "
            "(train with loss tracking: poisonclip train --track-loss-epochs E)"
        )
    scores = -inputs.early_loss.double()
    return torch.where(scores.isnan(), scores.nanmedian(), scores)
