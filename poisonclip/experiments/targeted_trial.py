"""One targeted-poisoning trial: K targets, one poisoned training run, all K attacks evaluated.

As in the paper (§4.2), one model measures several independent attacks: K (x′, y′) pairs are drawn
from the evaluation half of the labelled held-out split, each gets ``poisons_per_target`` poisons,
one model is trained on X ∪ P, and each target is scored under the zero-shot classifier and a
linear probe. A configuration's success rate is the fraction of (target, seed) attacks that succeed
over trials with different seeds (``poisonclip.evaluate.targeted.success_rate``).

The steps are separate so that a sweep can share one trained model between cells that differ only
in evaluation settings: ``poison_targets`` → ``train_model`` → ``evaluate_trained_targeted``;
``train_and_evaluate_targeted`` runs the last two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poisonclip.attacks.poison_set import PoisonSet
from poisonclip.attacks.targeted import Target, choose_targets, make_targeted_many
from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.evaluate.linear_probe import probe_split
from poisonclip.evaluate.targeted_suite import TargetedEvaluation, evaluate_targeted
from poisonclip.experiments.poisoning import Poisoned, TrialData, register_matrix_attack
from poisonclip.train.config import TrainConfig
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats
from poisonclip.train.model import context_length_of


@dataclass
class TargetedPoisoning:
    """The K targets of a trial and the training set that attacks them."""

    targets: list[Target]
    dataset: ImageTextDataset  # clean training pairs ∪ poisons
    poisons: PoisonSet | None  # None for 0 poisons per target
    poisons_per_target: int

    def metrics(self) -> dict[str, float | int | None]:
        rows = self.poisons.manifest if self.poisons else []
        psnrs = [row["psnr_db"] for row in rows if row["psnr_db"] is not None]
        count = len(rows)
        return {
            "poisons_per_target": self.poisons_per_target,
            "poison_count": count,
            "poison_rate": count / len(self.dataset),
            "min_psnr_db": min(psnrs, default=None),  # None: no poisons, or exact copies
        }


def poison_targets(
    train: ImageTextDataset,
    heldout: ImageTextDataset,
    classnames: Sequence[str],
    num_targets: int,
    poisons_per_target: int,
    seed: int = 0,
    options: TargetedOptions | None = None,
) -> TargetedPoisoning:
    """Draw K = ``num_targets`` targets by ``seed`` from the evaluation half of ``heldout``
    (``probe_split``) and add ``poisons_per_target`` poisons for each to ``train`` (none for 0:
    the clean model that gives the chance level), built with ``options`` (``make_targeted``'s)."""
    _, eval_idx = probe_split(heldout.labels)
    targets = [
        dataclasses.replace(t, index=int(eval_idx[t.index]))  # row in ``heldout``, not in the half
        for t in choose_targets(heldout.subset(eval_idx), classnames, num_targets, seed)
    ]
    if poisons_per_target == 0:
        return TargetedPoisoning(targets, train, None, 0)
    poisons = make_targeted_many(train, targets, poisons_per_target, seed, options)
    return TargetedPoisoning(
        targets, ImageTextDataset.concat([train, poisons.samples]), poisons, poisons_per_target
    )


def evaluate_trained_targeted(
    model: torch.nn.Module,
    model_config: dict,
    stats: TrainStats,
    poisoning: TargetedPoisoning,
    heldout: ImageTextDataset,
    classnames: Sequence[str],
    eval_templates: str = "synthetic",
) -> tuple[dict, TargetedEvaluation]:
    """Score every target of ``poisoning`` on a model from ``train_model``.

    Returns (flat metrics, evaluation with one row per target). Metrics: the evaluation's
    (``zero_shot_success_rate``, ``probe_success_rate``, mean ranks, clean ``zero_shot_acc`` and
    ``probe_acc``), the poison counts and rate, and the training stats.
    """
    evaluation = evaluate_targeted(
        model, poisoning.targets, heldout, classnames, eval_templates, context_length_of(model_config)
    )
    metrics = {
        **evaluation.metrics,
        **poisoning.metrics(),
        **{f"train_{k}": v for k, v in dataclasses.asdict(stats).items()},
    }
    metrics["train_seconds"] = stats.train_seconds
    return metrics, evaluation


def train_and_evaluate_targeted(
    poisoning: TargetedPoisoning,
    heldout: ImageTextDataset,
    classnames: Sequence[str],
    config: TrainConfig,
    eval_templates: str = "synthetic",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, TargetedEvaluation]:
    """``train_model`` on ``poisoning.dataset`` → ``evaluate_trained_targeted``, in one call.

    ``poisoning`` (from ``poison_targets``, whose seed picks targets and poisons) plays the part of
    ``train_and_evaluate_backdoor``'s poisoned dataset. The model's initialisation and data order
    are ``config.seed`` (a sweep over seeds should vary both). ``eval_templates`` is the zero-shot
    prompt set.
    """
    model, model_config, stats = train_model(poisoning.dataset, config, checkpoint_dir, progress)
    return evaluate_trained_targeted(
        model, model_config, stats, poisoning, heldout, classnames, eval_templates
    )


@register_matrix_attack("targeted")
def targeted_for_matrix(params: Any, data: TrialData) -> Poisoned:
    """The targeted attack in the attack × defense matrix: ``poison_targets`` with the parameters'
    ``TargetedOptions``, scored by the zero-shot success rate (``attack_success``) on ``data.test``."""
    test, classnames = data.test, data.classnames
    poisoning = poison_targets(
        data.train,
        test,
        classnames,
        params.num_targets,
        params.poisons_per_target,
        data.seed,
        params.options(),
    )

    def evaluate(model: torch.nn.Module, model_config: dict) -> dict:
        evaluation = evaluate_targeted(
            model, poisoning.targets, test, classnames, context_length=context_length_of(model_config)
        )
        return {**evaluation.metrics, "attack_success": evaluation.metrics["zero_shot_success_rate"]}

    return Poisoned(poisoning.dataset, poisoning.poisons.manifest, evaluate)
