"""The backdoor's trigger in sweeps: its experiment-file keys, and the poisoning that uses it.

Shared by the backdoor runner (``[backdoor]``) and the attack × defense matrix (``[defense]``), so
the trigger is built in one place. An experiment file names a trigger and gives its parameters as
keys of the same table, each of them a grid axis if it is a list::

    [backdoor]
    trigger = ["checkerboard", "blended"]   # attacks/triggers; default "checkerboard"
    alpha = 0.3                             # a parameter of blended (an error for checkerboard)

The keys a trigger takes are looked up when the file is read (``TriggerKeys.from_table``), so a
trigger registered at runtime works without editing this file. Result keys: ``patch_size`` and
``placement`` were fields of the parameter classes before triggers were plugins, and stored results
are keyed by them; a trigger parameter of either name is kept in that field, any other in
``trigger_params`` (the values that differ from the trigger's defaults, sorted). All of them and
``trigger`` are left out of the hash at their defaults (``keys.ADDED_LATER``), so a checkerboard
cell hashes exactly as before and a blended cell holds no patch size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poisonclip.attacks.backdoor import fit_trigger, make_backdoor
from poisonclip.attacks.triggers import Trigger, build_trigger, parameter_names
from poisonclip.attacks.triggers.base import parameters
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.evaluate.suite import evaluate_backdoor
from poisonclip.experiments.poisoning import Poisoned, TrialData, register_matrix_attack
from poisonclip.train.fit import train_model
from poisonclip.train.model import context_length_of

if TYPE_CHECKING:
    import torch

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


@register_matrix_attack("backdoor")
def backdoor_for_matrix(params: Any, data: TrialData) -> Poisoned:
    """The backdoor in the attack × defense matrix: ``backdoor_poisoning`` (a fitted trigger's
    surrogate trained on the clean set), scored by ASR (``attack_success``) and z on ``data.test``."""
    train, seed = data.train, data.seed
    poisoning = backdoor_poisoning(params, train, seed, clean_surrogate(train, data.recipe, seed))

    def evaluate(model: torch.nn.Module, model_config: dict) -> dict:
        metrics = evaluate_backdoor(
            model, data.test, data.classnames, params.target_label, poisoning.trigger, seed,
            context_length=context_length_of(model_config),
        ).metrics  # fmt: skip
        return {**metrics, "attack_success": metrics["asr"]}

    return Poisoned(poisoning.dataset, poisoning.manifest, evaluate)
