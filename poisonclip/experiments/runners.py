"""Trial runners: how a sweep trains and evaluates one model for each attack (a registry).

A runner is registered with its parameter dataclass, whose fields are the keys of the attack's
table in an experiment file (``[backdoor]``, ``[targeted]``); any of them may be a grid axis. The
dataclass provides ``training_params()`` — the part of the parameters that changes the trained
model; cells that agree on it share one model and are evaluated on it (evaluation-only settings
such as ``eval_placement``) — and ``check(data)``, its cross-checks against the data config. Each
attack's runner lives in its own module (``backdoor_trial.py``, ``targeted_trial.py``,
``defense_runner.py``: the table ``BUILTIN_RUNNERS``); a new attack adds one dataclass and one
decorated function::

    @register_runner("myattack", MyAttackParams)
    def run_myattack_trial(trial, train, test, classnames) -> list[CellResult]: ...

An attack whose trial trains exactly one model registers the parts before and after training
instead (``register_one_model_runner``), so that a sweep can train the models of several seeds in
one computation (``train_many``; on a GPU, ``poisonclip sweep run --seeds-per-job``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.registry import Registry
from poisonclip.train.config import TrainConfig
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats

if TYPE_CHECKING:
    from poisonclip.experiments.grid import Trial


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


# name -> the module that registers it (imported on first use)
BUILTIN_RUNNERS = {
    "backdoor": "poisonclip.experiments.backdoor_trial",
    "defense": "poisonclip.experiments.defense_runner",
    "targeted": "poisonclip.experiments.targeted_trial",
}
_RUNNERS: Registry[Runner] = Registry("sweep attack", BUILTIN_RUNNERS)


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
