"""How the attack × defense matrix poisons a training set and scores an attack: one entry per attack.

An attack registers ``poison(params, TrialData) -> Poisoned`` under the
name that ``[defense] attack_type`` takes; the matrix's runner (``defense_runner``) looks it up and
never branches on the attack. The entries live beside each attack's sweep runner
(``backdoor_trial.py``, ``targeted_trial.py``), built on the same poisoning functions, so a
matrix cell poisons exactly as the attack's own sweep does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poisonclip.registry import Registry

if TYPE_CHECKING:
    import torch

    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.train.config import TrainConfig


@dataclass(frozen=True)
class TrialData:
    """What one trial of the matrix poisons and evaluates on."""

    train: ImageTextDataset  # the clean training pairs
    test: ImageTextDataset  # labelled: the attack's and the clean evaluation
    classnames: list[str]
    seed: int  # the trial's: poisons, targets, initialisation and data order
    recipe: TrainConfig  # the undefended training (a fitted trigger's surrogate trains with it)


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set, its manifest, and how a model trained on it is scored."""

    dataset: ImageTextDataset  # clean training pairs ∪ poisons
    manifest: list[dict]
    # (model, model_config) -> flat metrics, among them ``attack_success`` and ``zero_shot_acc``
    evaluate: Callable[[torch.nn.Module, dict], dict]


PoisonFn = Callable[[Any, TrialData], Poisoned]

# name -> the module that registers it (imported on first use)
BUILTIN_MATRIX_ATTACKS = {
    "backdoor": "poisonclip.experiments.backdoor_trial",
    "targeted": "poisonclip.experiments.targeted_trial",
}
_MATRIX_ATTACKS: Registry[PoisonFn] = Registry("matrix attack", BUILTIN_MATRIX_ATTACKS)
register_matrix_attack = _MATRIX_ATTACKS.register
list_matrix_attacks = _MATRIX_ATTACKS.names
get_matrix_attack = _MATRIX_ATTACKS.get
