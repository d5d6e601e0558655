"""How the attack × defense matrix poisons a training set and scores an attack: one entry per attack.

An attack registers ``poison(params, TrialData) -> Poisoned`` under the
name that ``[defense] attack_type`` takes, with the ``[defense]`` keys that only it reads; the
matrix's runner (``defense_runner``) looks it up and never branches on the attack, and the report
leaves an attack's keys out of the other attacks' labels. The entries live beside each attack's sweep runner
(``backdoor_trial.py``, ``targeted_trial.py``), built on the same poisoning functions, so a
matrix cell poisons exactly as the attack's own sweep does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poisonclip.registry import Registry

if TYPE_CHECKING:
    import torch

    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.data.files import DataConfig
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
    # (model, model_config, zero-shot prompts: a set name or a templates file) -> flat metrics,
    # among them ``attack_success`` and ``zero_shot_acc``
    evaluate: Callable[[torch.nn.Module, dict, str], dict]


@dataclass(frozen=True)
class MatrixAttack:
    poison: Callable[[Any, TrialData], Poisoned]
    keys: tuple[str, ...]  # the [defense] keys only this attack reads
    check: Callable[[Any, DataConfig], None] | None  # its keys against the data, before any work


# name -> the module that registers it (imported on first use)
BUILTIN_MATRIX_ATTACKS = {
    "backdoor": "poisonclip.experiments.backdoor_trial",
    "targeted": "poisonclip.experiments.targeted_trial",
}
_MATRIX_ATTACKS: Registry[MatrixAttack] = Registry("matrix attack", BUILTIN_MATRIX_ATTACKS)
list_matrix_attacks = _MATRIX_ATTACKS.names


def register_matrix_attack(
    name: str, keys: Sequence[str], check: Callable[[Any, DataConfig], None] | None = None
) -> Callable[[Callable], Callable]:
    """Register ``poison(params, data: TrialData) -> Poisoned`` as attack ``name``, reading ``keys``;
    ``check(params, data_config)`` refuses settings that do not fit the data (``UsageError``)."""

    def decorator(poison: Callable) -> Callable:
        _MATRIX_ATTACKS.add(name, MatrixAttack(poison, tuple(keys), check))
        return poison

    return decorator


def check_matrix_attack(name: str, params: Any, data: DataConfig) -> None:
    """Attack ``name``'s own checks of ``params`` against the data config, if it has any."""
    if (check := _MATRIX_ATTACKS.get(name).check) is not None:
        check(params, data)


def get_matrix_attack(name: str) -> Callable[[Any, TrialData], Poisoned]:
    return _MATRIX_ATTACKS.get(name).poison


def keys_of_other_attacks(name: str) -> tuple[str, ...]:
    """The ``[defense]`` keys that another attack reads and attack ``name`` does not."""
    own = set(_MATRIX_ATTACKS.get(name).keys)
    others = [k for other in list_matrix_attacks() if other != name for k in _MATRIX_ATTACKS.get(other).keys]
    return tuple(dict.fromkeys(k for k in others if k not in own))
