"""One targeted-poisoning trial: K targets, one poisoned training run, all K attacks evaluated; the
sweep's runner for it (``[targeted]``, ``TargetedParams``) and its part of the attack × defense
matrix (``[defense] attack_type = "targeted"``).

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
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from poisonclip.attacks.poison_set import PoisonSet
from poisonclip.attacks.targeted import Target, choose_targets, make_targeted_many
from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.data.prompts import check_templates
from poisonclip.errors import UsageError
from poisonclip.evaluate.linear_probe import probe_split
from poisonclip.evaluate.targeted_suite import TargetedEvaluation, evaluate_targeted
from poisonclip.experiments.poisoning import Poisoned, TrialData, register_matrix_attack
from poisonclip.experiments.runners import CellResult, OneModel, register_one_model_runner
from poisonclip.keys import config_dict
from poisonclip.train.config import TrainConfig
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats
from poisonclip.train.model import tokenizer_for

if TYPE_CHECKING:
    from poisonclip.data.files import DataConfig
    from poisonclip.experiments.grid import Trial


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
    templates: str,
) -> tuple[dict, TargetedEvaluation]:
    """Score every target of ``poisoning`` on a model from ``train_model``.

    Returns (flat metrics, evaluation with one row per target). Metrics: the evaluation's
    (``zero_shot_success_rate``, ``probe_success_rate``, mean ranks, clean ``zero_shot_acc`` and
    ``probe_acc``), the poison counts and rate, and the training stats.
    """
    evaluation = evaluate_targeted(
        model, poisoning.targets, heldout, classnames, templates, tokenizer_for(model_config)
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
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    *,
    templates: str,
) -> tuple[dict, TargetedEvaluation]:
    """``train_model`` on ``poisoning.dataset`` → ``evaluate_trained_targeted``, in one call.

    ``poisoning`` (from ``poison_targets``, whose seed picks targets and poisons) plays the part of
    ``train_and_evaluate_backdoor``'s poisoned dataset. The model's initialisation and data order
    are ``config.seed`` (a sweep over seeds should vary both). ``templates`` are the zero-shot
    prompts (a set name or a templates file).
    """
    model, model_config, stats = train_model(poisoning.dataset, config, checkpoint_dir, progress)
    return evaluate_trained_targeted(model, model_config, stats, poisoning, heldout, classnames, templates)


@register_matrix_attack(
    "targeted", ("num_targets", "poisons_per_target", *(f.name for f in dataclasses.fields(TargetedOptions)))
)
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

    def evaluate(model: torch.nn.Module, model_config: dict, templates: str) -> dict:
        evaluation = evaluate_targeted(
            model, poisoning.targets, test, classnames, templates, tokenizer_for(model_config)
        )
        return {**evaluation.metrics, "attack_success": evaluation.metrics["zero_shot_success_rate"]}

    return Poisoned(poisoning.dataset, poisoning.poisons.manifest, evaluate)


@dataclass(frozen=True)
class TargetedParams(TargetedOptions):
    """The targeted attack in a sweep (paper §3.1, §4.2); the keys of ``[targeted]``: these fields
    and the poisons' options (``TargetedOptions``: captions, noise_std, perturb_captions,
    template_set, word_boundary)."""

    # the other options were keys from the start, hashed at their defaults too
    ADDED_LATER_FIELDS: ClassVar[tuple[str, ...]] = ("word_boundary",)
    num_targets: int = 8  # K attacks (x′, y′) per model, drawn by seed from the test split
    poisons_per_target: int = 16  # copies of each x′ added; 0 = a clean model (the chance level)
    eval_templates: str = "synthetic"  # zero-shot prompts at evaluation (evaluation only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_targets < 1:
            raise UsageError(f"num_targets must be >= 1, got {self.num_targets}")
        if self.poisons_per_target < 0:
            raise UsageError(f"poisons_per_target must be >= 0, got {self.poisons_per_target}")
        check_templates("eval_templates", self.eval_templates)

    def training_params(self) -> dict:
        if self.poisons_per_target == 0:  # a clean model: targets and poison settings are not trained in
            return {"poisons_per_target": 0}
        params = config_dict(self)
        del params["eval_templates"]
        return params

    def check(self, data: DataConfig) -> None:
        # Targets come from the evaluation half of the test split (``probe_split``).
        if self.num_targets > data.num_test // 2:
            raise UsageError(
                f"num_targets {self.num_targets} exceeds the {data.num_test // 2} test images targets "
                "are drawn from (half of num_test; the other half fits the linear probe)"
            )
        if (total := self.num_targets * self.poisons_per_target) > data.num_train:
            raise UsageError(
                f"num_targets × poisons_per_target = {total} poisons exceeds num_train {data.num_train}"
            )


@register_one_model_runner("targeted", TargetedParams)
def prepare_targeted_trial(
    trial: Trial, train: ImageTextDataset, test: ImageTextDataset, classnames: list[str]
) -> OneModel:
    """Draw the trial's K targets by its seed from the evaluation half of ``test`` and add their
    poisons to ``train`` (none for 0 per target); the model trained with the trial's seed scores the
    K attacks once per cell (zero-shot prompts; on a clean model also the number of targets)."""

    def poisoning_of(p: TargetedParams) -> TargetedPoisoning:
        count = p.poisons_per_target
        return poison_targets(train, test, classnames, p.num_targets, count, trial.seed, p.options())

    first = trial.cells[0]
    poisoning = poisoning_of(first.params)

    def finish(model: torch.nn.Module, model_config: dict, stats: TrainStats) -> list[CellResult]:
        results = []
        for cell in trial.cells:
            p = cell.params
            # Cells of a poisoned model share its poisons. On a clean model the number of targets is
            # evaluation-only, so a cell with another K draws its own targets (no poisons to build).
            cell_poisoning = poisoning if p.num_targets == first.params.num_targets else poisoning_of(p)
            metrics, evaluation = evaluate_trained_targeted(
                model, model_config, stats, cell_poisoning, test, classnames, p.eval_templates
            )
            metrics.update(
                num_train_pairs=len(cell_poisoning.dataset),
                # one target's poisons as a share of the training set: the paper's rate (3 of 3M)
                target_poison_rate=p.poisons_per_target / len(cell_poisoning.dataset),
                num_classes=len(classnames),  # the figure's reference rate 1/(classes − 1)
            )
            ranks = {
                key: [row[key] for row in evaluation.per_target] for key in ("zero_shot_rank", "probe_rank")
            }
            results.append(CellResult(metrics, ranks))
        return results

    return OneModel(poisoning.dataset, first.train.replace(seed=trial.seed), finish)
