"""The backdoor in sweeps: its runner (``[backdoor]``, ``BackdoorParams``), its part of the attack ×
defense matrix (``[defense] attack_type = "backdoor"``), and the trigger keys and poisoning both use.

The trigger is built in one place for both. An experiment file names a trigger and gives its parameters as
keys of the same table, each of them a grid axis if it is a list::

    [backdoor]
    trigger = ["checkerboard", "blended"]   # attacks/triggers; default "checkerboard"
    alpha = 0.3                             # a parameter of blended (an error for checkerboard)

The keys a trigger takes are looked up when the file is read (``TriggerKeys.from_table``), so a
trigger registered at runtime works without editing this file. Result keys: ``patch_size`` and
``placement`` were fields of the parameter classes before triggers were plugins, and stored results
are keyed by them; a trigger parameter of either name is kept in that field, any other in
``trigger_params`` (the values that differ from the trigger's defaults, sorted). All of them and
``trigger`` are left out of the hash at their defaults (``keys.added_later``), so a checkerboard
cell hashes exactly as before and a blended cell holds no patch size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from poisonclip.attacks.backdoor import fit_trigger, make_backdoor
from poisonclip.attacks.triggers import Trigger, build_trigger, parameter_names
from poisonclip.attacks.triggers.base import parameters
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.data.prompts import check_templates
from poisonclip.errors import UsageError
from poisonclip.evaluate.metrics import pair_similarity_histogram, same_label_by_similarity
from poisonclip.evaluate.suite import BackdoorEvaluation, backdoor_linear_probe, evaluate_backdoor
from poisonclip.experiments.poisoning import Poisoned, TrialData, register_matrix_attack
from poisonclip.experiments.runners import CellResult, OneModel, register_one_model_runner
from poisonclip.experiments.trial import evaluate_trained_backdoor
from poisonclip.keys import ADDED_LATER, config_dict
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats
from poisonclip.train.model import tokenizer_for

if TYPE_CHECKING:
    from poisonclip.data.files import DataConfig
    from poisonclip.experiments.grid import Trial
    from poisonclip.train.config import TrainConfig

LEGACY_KEYS = ("patch_size", "placement")  # trigger parameters with fields of their own (result keys)
# A sweep's badclip surrogate: a clean model trained with the trial's seed + this (another
# initialisation and data order than the victim's).
SURROGATE_SEED_OFFSET = 1000


class TriggerKeys:
    """Methods of a frozen parameter dataclass with the fields ``trigger``, ``trigger_params``,
    ``patch_size`` and ``placement`` (see the module docstring); its ``__post_init__`` calls
    ``resolve_trigger``."""

    trigger: str
    trigger_params: tuple[tuple[str, Any], ...]

    @classmethod
    def from_table(cls, values: dict[str, Any]) -> Any:
        """The parameters from one grid point of the experiment-file table: the class's own fields,
        and the chosen trigger's parameters."""
        own = {f.name for f in dataclasses.fields(cls)} - {"trigger_params"}
        name = values.get("trigger", cls.trigger)
        extra = {key: value for key, value in values.items() if key not in own}
        if unknown := sorted(set(extra) - set(parameter_names(name))):
            allowed = sorted(own | set(parameter_names(name)))
            raise UsageError(f"unknown keys {unknown} for trigger {name!r}; allowed: {allowed}")
        return cls(
            **{k: v for k, v in values.items() if k in own}, trigger_params=tuple(sorted(extra.items()))
        )

    def trigger_spec(self) -> Trigger:
        """The trigger these parameters describe (not fitted)."""
        legacy = {key: getattr(self, key) for key in LEGACY_KEYS if getattr(self, key) is not None}
        return build_trigger(self.trigger, {**legacy, **dict(self.trigger_params)})

    def resolve_trigger(self) -> Trigger:
        """Validate the trigger, and store its legacy keys and other parameters canonically."""
        if overlap := sorted({key for key, _ in self.trigger_params} & set(LEGACY_KEYS)):
            raise UsageError(f"{overlap} are fields of their own, not trigger_params")
        spec = self.trigger_spec()
        for key in LEGACY_KEYS:
            object.__setattr__(self, key, getattr(spec, key, None))
        defaults = {f.name: f.default for f in parameters(type(spec))}
        given = sorted(key for key, _ in self.trigger_params)
        canonical = tuple((key, getattr(spec, key)) for key in given if getattr(spec, key) != defaults[key])
        object.__setattr__(self, "trigger_params", canonical)
        return spec


def evaluation_placement(spec: Trigger, eval_placement: str | None) -> str | None:
    """Where test images carry a trigger that has a placement: ``eval_placement``, by default the
    trigger's own default placement (the checkerboard's "consistent", as before triggers were
    plugins; badnets' "random"); None for a trigger without one."""
    if "placement" not in spec.values():
        if eval_placement is not None:
            raise UsageError(f"eval_placement: trigger {spec.name!r} has no placement")
        return None
    placement = eval_placement or type(spec).__dataclass_fields__["placement"].default
    try:
        dataclasses.replace(spec, placement=placement)
    except UsageError as err:
        raise UsageError(f"eval_placement: {err}") from err
    return placement


def placed(trigger: Trigger, placement: str | None) -> Trigger:
    """``trigger`` (fitted state included) at another placement, if one is given."""
    return trigger if placement is None else dataclasses.replace(trigger, placement=placement)


@dataclass(frozen=True)
class BackdoorPoisoning:
    dataset: ImageTextDataset  # the training set: clean ∪ poisons (the clean set alone for 0 poisons)
    manifest: list[dict]
    trigger: Trigger  # as the poisons carry it (fitted, where it is fitted)


def clean_surrogate(train: ImageTextDataset, recipe: TrainConfig, seed: int) -> Callable:
    """A model for triggers fitted against one (badclip) that name no checkpoint: trained once,
    when first asked for, on the clean training set (``SURROGATE_SEED_OFFSET``)."""

    @functools.cache
    def build() -> tuple[torch.nn.Module, dict]:
        model, model_config, _ = train_model(
            train, recipe.replace(seed=seed + SURROGATE_SEED_OFFSET), progress=False
        )
        return model, model_config

    return build


def backdoor_poisoning(
    params: Any, train: ImageTextDataset, seed: int, surrogate: Callable | None = None
) -> BackdoorPoisoning:
    """Add ``params.poison_count`` backdoor poisons with ``params``' trigger to ``train`` (seed:
    the poison selection and positions); for 0 poisons only fit the trigger as poisoning would."""
    spec = params.trigger_spec()
    if params.poison_count == 0:
        return BackdoorPoisoning(train, [], fit_trigger(spec, train, params.target_label, surrogate))
    poisons = make_backdoor(train, params.target_label, params.poison_count, spec, seed, surrogate=surrogate)
    return BackdoorPoisoning(
        ImageTextDataset.concat([train, poisons.samples]), poisons.manifest, poisons.trigger
    )


def check_backdoor(params: Any, data: DataConfig) -> None:
    """The trigger fits the data's images and the target label is one of its classes."""
    params.trigger_spec().check_image_size(data.image_size)
    if params.target_label not in data.classnames:
        shown = ", ".join(data.classnames[:8]) + (", ..." if len(data.classnames) > 8 else "")
        raise UsageError(
            f"target_label {params.target_label!r} is not a class of the data ({shown}): name one of them"
        )


@register_matrix_attack(
    "backdoor", ("target_label", "poison_count", *LEGACY_KEYS, "trigger", "trigger_params"), check_backdoor
)
def backdoor_for_matrix(params: Any, data: TrialData) -> Poisoned:
    """The backdoor in the attack × defense matrix: ``backdoor_poisoning`` (a fitted trigger's
    surrogate trained on the clean set), scored by ASR (``attack_success``) and z on ``data.test``."""
    train, seed = data.train, data.seed
    poisoning = backdoor_poisoning(params, train, seed, clean_surrogate(train, data.recipe, seed))

    def evaluate(model: torch.nn.Module, model_config: dict, templates: str) -> dict:
        metrics = evaluate_backdoor(
            model, data.test, data.classnames, params.target_label, poisoning.trigger, seed,
            templates=templates, tokenizer=tokenizer_for(model_config),
        ).metrics  # fmt: skip
        return {**metrics, "attack_success": metrics["asr"]}

    return Poisoned(poisoning.dataset, poisoning.manifest, evaluate)


# Bins of the per-trial curves stored with every result row (paper Fig 3).
SIMILARITY_EDGES = torch.linspace(-1, 1, 41)  # left: P(same label) per pair-similarity bin
HISTOGRAM_EDGES = torch.linspace(-1, 1, 101)  # right: clean-pair vs patched-pair similarity


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

    def check(self, data: DataConfig) -> None:
        check_backdoor(self, data)
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
