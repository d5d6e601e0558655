"""Trial runners: how a sweep trains and evaluates one model for each attack (a registry).

A runner is registered with its parameter dataclass, whose fields are the keys of the attack's
table in an experiment file (``[backdoor]``, ``[targeted]``); any of them may be a grid axis. The
dataclass provides ``training_params()`` — the part of the parameters that changes the trained
model; cells that agree on it share one model and are evaluated on it (evaluation-only settings
such as ``eval_placement``) — and ``check(data)``, its cross-checks against the data config. A new
attack adds one dataclass and one decorated function to this file::

    @register_runner("myattack", MyAttackParams)
    def run_myattack_trial(trial, train, test, classnames) -> list[CellResult]: ...

An attack whose trial trains exactly one model registers the parts before and after training
instead (``register_one_model_runner``), so that a sweep can train the models of several seeds in
one computation (``train_many``; on a GPU, ``poisonclip sweep run --seeds-per-job``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.attacks.triggers import Trigger
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.data.prompts import check_templates
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.evaluate.metrics import pair_similarity_histogram, same_label_by_similarity
from poisonclip.evaluate.suite import BackdoorEvaluation, backdoor_linear_probe
from poisonclip.experiments.backdoor_trial import (
    TriggerKeys,
    backdoor_poisoning,
    clean_surrogate,
    evaluation_placement,
    placed,
)
from poisonclip.experiments.targeted_trial import (
    TargetedPoisoning,
    evaluate_trained_targeted,
    poison_targets,
)
from poisonclip.experiments.trial import evaluate_trained_backdoor
from poisonclip.keys import ADDED_LATER, config_dict
from poisonclip.registry import Registry
from poisonclip.train.config import TrainConfig
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats

if TYPE_CHECKING:
    from poisonclip.experiments.grid import Trial

# Bins of the per-trial curves stored with every result row (paper Fig 3).
SIMILARITY_EDGES = torch.linspace(-1, 1, 41)  # left: P(same label) per pair-similarity bin
HISTOGRAM_EDGES = torch.linspace(-1, 1, 101)  # right: clean-pair vs patched-pair similarity


@dataclass(frozen=True)
class CellResult:
    """What a trial reports for one of its cells: flat numbers and binned curves (lists)."""

    metrics: dict[str, float | int]
    curves: dict[str, list[float] | list[int]]


@dataclass(frozen=True)
class OneModel:
    """A trial that trains one model: its training set and recipe, and what to do with the model."""

    dataset: ImageTextDataset
    config: TrainConfig
    finish: Callable[[torch.nn.Module, dict, TrainStats], list[CellResult]]  # (model, config, stats)


@dataclass(frozen=True)
class Runner:
    name: str
    params: type  # frozen dataclass with training_params() and check(data)
    run: Callable[[Trial, ImageTextDataset, ImageTextDataset, list[str]], list[CellResult]]
    prepare: Callable[[Trial, ImageTextDataset, ImageTextDataset, list[str]], OneModel] | None = None


_RUNNERS: Registry[Runner] = Registry("sweep attack")


def register_runner(name: str, params: type) -> Callable[[Callable], Callable]:
    """Register ``run(trial, train, test, classnames) -> [CellResult per trial.cells]``."""

    def decorator(fn: Callable) -> Callable:
        _RUNNERS.add(name, Runner(name, params, fn))
        return fn

    return decorator


def register_one_model_runner(name: str, params: type) -> Callable[[Callable], Callable]:
    """Register ``prepare(trial, train, test, classnames) -> OneModel``; its ``run`` trains the model
    with ``train_model`` and finishes it."""

    def decorator(prepare: Callable) -> Callable:
        def run(trial: Trial, train: ImageTextDataset, test: ImageTextDataset, classnames: list[str]):
            job = prepare(trial, train, test, classnames)
            return job.finish(*train_model(job.dataset, job.config, progress=False))

        _RUNNERS.add(name, Runner(name, params, run, prepare))
        return prepare

    return decorator


list_runners = _RUNNERS.names
get_runner = _RUNNERS.get


@dataclass(frozen=True)
class BackdoorParams(TriggerKeys):
    """The backdoor attack in a sweep (paper §3.3, §5.1); the keys of ``[backdoor]``: these fields
    and the trigger's parameters (``experiments/backdoor_trial.py``; a parameter of the trigger
    called ``patch_size`` or ``placement`` is kept in the field of that name)."""

    target_label: str = "star"
    poison_count: int = 100  # poisons added to the clean pairs; 0 = a clean model (the baseline)
    # None: the trigger's default; for a trigger without the parameter, None stays (unhashed)
    patch_size: int | None = field(default=None, metadata={ADDED_LATER: True})  # patch side in pixels
    placement: str | None = field(default=None, metadata={ADDED_LATER: True})  # where the poisons carry it
    # where the test images carry it (evaluation only); None: the trigger's default placement
    eval_placement: str | None = field(default=None, metadata={ADDED_LATER: True})
    # zero-shot prompts (evaluation only): a set name (poisonclip.data.prompts) or a file
    eval_templates: str = field(default="synthetic", metadata={ADDED_LATER: True})
    trigger: str = field(default="checkerboard", metadata={ADDED_LATER: True})  # attacks/triggers
    trigger_params: tuple[tuple[str, Any], ...] = field(default=(), metadata={ADDED_LATER: True})

    def __post_init__(self) -> None:
        check_templates("eval_templates", self.eval_templates)
        if self.poison_count < 0:
            raise UsageError(f"poison_count must be >= 0, got {self.poison_count}")
        spec = self.resolve_trigger()
        object.__setattr__(self, "eval_placement", evaluation_placement(spec, self.eval_placement))

    def evaluation_trigger(self, fitted: Trigger) -> Trigger:
        """The trigger the test images carry: the poisons' own, at ``eval_placement`` if it has one."""
        return placed(fitted, self.eval_placement)

    def training_params(self) -> dict:
        if self.poison_count == 0:  # a clean model: no trigger, target or placement is trained in
            return {"poison_count": 0}
        params = config_dict(self)
        params.pop("eval_placement", None)  # config_dict leaves both out where None or default
        params.pop("eval_templates", None)
        return params

    def check(self, data: SyntheticConfig) -> None:
        self.trigger_spec().check_image_size(data.image_size)
        if self.target_label not in data.classnames:
            raise UsageError(f"target_label {self.target_label!r} is not a class of the synthetic data")
        if self.poison_count > data.num_train:
            raise UsageError(f"poison_count {self.poison_count} exceeds num_train {data.num_train}")


@register_one_model_runner("backdoor", BackdoorParams)
def prepare_backdoor_trial(
    trial: Trial, train: ImageTextDataset, test: ImageTextDataset, classnames: list[str]
) -> OneModel:
    """Add the trial's poisons to ``train`` (none for 0 poisons); the model trained with the trial's
    seed is evaluated once per cell (its target, trigger and evaluation placement; the cells of a
    clean model may name different triggers, each fitted as poisoning would fit it)."""
    first = trial.cells[0]  # all cells share training_params(), hence the same poisons
    params, recipe = first.params, first.train.replace(seed=trial.seed)
    surrogate = clean_surrogate(train, recipe, trial.seed)
    poisoning = backdoor_poisoning(params, train, trial.seed, surrogate) if params.poison_count else None
    dataset = poisoning.dataset if poisoning else train

    def fitted(p: BackdoorParams) -> Trigger:
        """The poisons' trigger; on a clean model, the cell's trigger fitted as poisoning would fit it."""
        return poisoning.trigger if poisoning else backdoor_poisoning(p, train, trial.seed, surrogate).trigger

    def finish(model: torch.nn.Module, model_config: dict, stats: TrainStats) -> list[CellResult]:
        sizes = {
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_params_visual": sum(p.numel() for p in model.visual.parameters()),
        }
        results = []
        for cell in trial.cells:
            p = cell.params
            trigger = p.evaluation_trigger(fitted(p))
            metrics, evaluation = evaluate_trained_backdoor(
                model,
                model_config,
                stats,
                test,
                classnames,
                p.target_label,
                trigger,
                trial.seed,
                p.eval_templates,
            )
            metrics.update(backdoor_linear_probe(evaluation, len(classnames)))
            metrics.update(
                sizes, num_train_pairs=len(dataset), poison_rate=params.poison_count / len(dataset)
            )
            if (area := trigger.area_fraction(test.images.shape[-1])) is not None:
                metrics["patch_area_fraction"] = area
            results.append(CellResult(metrics, similarity_curves(evaluation)))
        return results

    return OneModel(dataset, recipe, finish)


def similarity_curves(evaluation: BackdoorEvaluation) -> dict[str, list]:
    """Binned pair statistics of one evaluation (exact, all pairs i < j of non-target test images)."""
    pairs, same_label = same_label_by_similarity(
        evaluation.clean_features, evaluation.labels, SIMILARITY_EDGES
    )
    _, same_prediction = same_label_by_similarity(
        evaluation.clean_features, evaluation.clean_predictions, SIMILARITY_EDGES
    )
    return {
        "similarity_edges": SIMILARITY_EDGES.tolist(),
        "pairs": pairs,
        "same_label": same_label,
        "same_prediction": same_prediction,
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "clean_pairs": pair_similarity_histogram(evaluation.clean_features, HISTOGRAM_EDGES),
        "patched_pairs": pair_similarity_histogram(evaluation.patched_features, HISTOGRAM_EDGES),
    }


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

    def check(self, data: SyntheticConfig) -> None:
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
