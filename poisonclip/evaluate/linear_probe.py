"""Linear-probe classification (paper §4.2): logistic regression on frozen image embeddings.

The paper fits the probe on the embeddings of 50,000 random ImageNet training images. The synthetic
data's only labelled split is its held-out test set, so ``probe_split`` divides it, deterministically
and class-balanced, into a probe-fit half and an evaluation half; targets and accuracy then come
from the evaluation half only, and the probe never sees x′.
"""

from __future__ import annotations

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from poisonclip.errors import UsageError


def probe_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, evaluation indices), both int64 and sorted, of a labelled set ``labels`` int [N].

    Within each class, samples alternate between the halves in their original order, so both halves
    have (to within one) the same class counts and the split depends on nothing but ``labels``.
    """
    order = torch.argsort(labels, stable=True)
    return order[0::2].sort().values, order[1::2].sort().values


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, regularization: float = 1.0, max_iter: int = 1000
) -> Pipeline:
    """Multinomial logistic regression on ``features`` float [N, D] with ``labels`` int [N].

    Features are standardised first so that ``regularization`` (sklearn's C, inverse strength) means
    the same for unit-norm embeddings of any width. Deterministic (L-BFGS).
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"need features [N, D] and labels [N], got {tuple(features.shape)}, {tuple(labels.shape)}"
        )
    if len(labels.unique()) < 2:
        raise UsageError("the linear probe needs labelled images of at least two classes")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=max_iter))
    probe.fit(features.double().numpy(), labels.numpy())
    return probe


def probe_scores(probe: Pipeline, features: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Decision scores float64 [M, num_classes] of ``features`` [M, D]; column c is class c.

    Classes absent from the probe's training labels score −inf (the probe can never predict them).
    """
    raw = torch.from_numpy(probe.decision_function(features.double().numpy()))
    classes = torch.as_tensor(probe.classes_, dtype=torch.long)
    if raw.ndim == 1:  # sklearn returns one column for two classes: the logit of classes_[1]
        raw = torch.stack([torch.zeros_like(raw), raw], dim=1)
    scores = torch.full((features.shape[0], num_classes), -torch.inf, dtype=torch.float64)
    scores[:, classes] = raw
    return scores


def probe_backdoor_metrics(
    fit_features: torch.Tensor,
    fit_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    patched_features: torch.Tensor | None,
    target: int | None,
    num_classes: int,
) -> dict[str, float]:
    """The backdoor seen through a linear probe (paper §4.3: "the zero-shot model can be vulnerable
    even if the linear probe model is not").

    Fits the probe on ``fit_features`` [F, D] / ``fit_labels`` [F] (e.g. an ImageFolder train
    split), then returns its clean accuracy on ``test_features`` [N, D] / ``test_labels`` [N], its
    ASR on ``patched_features`` [M, D] (the non-target test images, patched, in order) and the
    natural rate of the same images unpatched. Without a ``target`` (no backdoor to measure), the
    clean accuracy only.
    """
    from poisonclip.evaluate.metrics import accuracy, attack_success_rate

    probe = fit_linear_probe(fit_features, fit_labels)
    clean_pred = probe_scores(probe, test_features, num_classes).argmax(dim=1)
    metrics = {"probe_acc": accuracy(clean_pred, test_labels)}
    if target is not None and patched_features is not None:
        patched_pred = probe_scores(probe, patched_features, num_classes).argmax(dim=1)
        nontarget = test_labels != target
        metrics["probe_asr"] = attack_success_rate(patched_pred, test_labels[nontarget], target)
        metrics["probe_natural_rate"] = attack_success_rate(
            clean_pred[nontarget], test_labels[nontarget], target
        )
    metrics["probe_num_fit"] = int(fit_labels.shape[0])
    return metrics
