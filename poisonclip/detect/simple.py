"""Detectors that need no neighbour search: CLIP score, Isolation Forest, ABL-style loss tracking."""

from __future__ import annotations

import torch

from poisonclip.detect.registry import DetectorInputs, register_detector
from poisonclip.errors import UsageError


@register_detector("clip-score")
def clip_score(inputs: DetectorInputs) -> torch.Tensor:
    """Negated image–caption cosine similarity: pairs the model finds ill-matched rank first."""
    return -(inputs.image.double() * inputs.text.double()).sum(dim=1)


@register_detector("isolation-forest")
def isolation_forest(inputs: DetectorInputs, n_estimators: int = 100, seed: int = 0) -> torch.Tensor:
    """scikit-learn's Isolation Forest on the joint embedding [image, caption] [N, 2D]; the score is
    the negated ``score_samples`` (higher = isolated in fewer random splits = more anomalous)."""
    from sklearn.ensemble import IsolationForest

    joint = torch.cat([inputs.image, inputs.text], dim=1).double().numpy()
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(joint)
    return -torch.from_numpy(forest.score_samples(joint))


@register_detector("loss-tracking")
def loss_tracking(inputs: DetectorInputs) -> torch.Tensor:
    """ABL-style: the negated per-sample contrastive loss averaged over the first training epochs
    (poisons are learned fast, so their loss drops first). Samples that were never in a batch of
    those epochs (the dropped partial batch) get the median score."""
    if inputs.early_loss is None:
        raise UsageError(
            "loss-tracking needs the per-sample losses of the first training epochs "
            "(train with loss tracking: poisonclip train --track-loss-epochs E)"
        )
    scores = -inputs.early_loss.double()
    return torch.where(scores.isnan(), scores.nanmedian(), scores)
