"""Defenses against poisoning: a registry of (parameter dataclass, function), and their common I/O.

A defense turns what a defender has (``DefenseContext``: the possibly poisoned training set, the
training recipe, the model trained on it, a clean subset) into a model (``DefenseOutcome``). None
copies the training loop: each is ``train_clip`` with another objective, another data subset, or
another starting point. None is told which pairs are poisons.

Defenses are named in sweeps by a spec string: a name, optionally with parameters (fields of its
parameter dataclass; a tuple's items separated by spaces), and a shorthand for filters::

    none | cleanclip | roclip | safeclip | roclip(pool_size=256) | cleanclip(lrs=1e-5 1e-4, epochs=5)
    filter:<detector>@<percent>%     e.g. filter:slof@5% = filter(detector=slof, fraction=0.05)
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poisonclip.errors import UsageError
from poisonclip.registry import Registry

if TYPE_CHECKING:  # not at run time: listing the defenses loads no torch
    import torch

    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.train.config import TrainConfig


@dataclass(frozen=True)
class DefenseContext:
    """What a defender has; each defense lists the fields it needs (``Defense.needs``)."""

    train: TrainConfig  # the recipe the undefended model was trained with (model, epochs, seed ...)
    dataset: ImageTextDataset | None = None  # the training set as collected (poisons unmarked)
    model: torch.nn.Module | None = None  # the undefended model trained on ``dataset``
    clean: ImageTextDataset | None = None  # pairs the defender trusts (CleanCLIP's fine-tuning set)
    early_loss: torch.Tensor | None = None  # float64 [N]: the undefended run's early per-sample losses
    progress: bool = False
    # for diagnostics only, never for decisions: the class names captions may name, and a clean
    # zero-shot accuracy of a model (defenses that train from scratch report it per epoch)
    classnames: tuple[str, ...] = ()
    monitor: Callable[[torch.nn.Module], float] | None = None


@dataclass(frozen=True)
class DefenseOutcome:
    """The defended model and what the defense cost and decided."""

    model: torch.nn.Module
    seconds: float  # wall-clock of the defense itself (training, fine-tuning, scoring)
    record: dict = field(default_factory=dict)  # flat numbers and small lists (e.g. the lr sweep)
    flagged: torch.Tensor | None = None  # bool [N]: pairs treated as suspicious (dropped, "risky")
    trained_on: torch.Tensor | None = None  # bool [N]: the pairs trained on, where some are dropped
    scores: torch.Tensor | None = None  # float64 [N]: the detector ranking behind ``flagged``
    alternatives: dict[str, torch.nn.Module] = field(default_factory=dict)  # candidates not chosen


NEEDS = {"dataset": "the training set", "model": "the undefended model", "clean": "clean pairs"}


@dataclass(frozen=True)
class Defense:
    name: str
    params: type  # frozen dataclass; its defaults are the published (or toy-adapted) settings
    needs: tuple[str, ...]  # DefenseContext fields that must be given
    fn: Callable[[DefenseContext, object], DefenseOutcome]

    def run(self, context: DefenseContext, params: object) -> DefenseOutcome:
        if missing := [NEEDS[need] for need in self.needs if getattr(context, need) is None]:
            raise UsageError(f"defense {self.name} needs {' and '.join(missing)}")
        return self.fn(context, params)


# The built-in defenses (but "none", below) and the module registering each, imported on a first
# lookup; listed as they are (tests/test_defend.py checks that the modules register exactly these).
BUILTIN_DEFENSES = {
    "cleanclip": "poisonclip.defend.cleanclip",
    "filter": "poisonclip.defend.filtering",
    "roclip": "poisonclip.defend.roclip",
    "safeclip": "poisonclip.defend.safeclip",
}
_DEFENSES: Registry[Defense] = Registry("defense", BUILTIN_DEFENSES)


def register_defense(name: str, params: type, needs: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """Register ``fn(context, params) -> DefenseOutcome`` with its parameter dataclass and the
    ``DefenseContext`` fields it needs (``dataset``, ``model``, ``clean``)."""
    if unknown := set(needs) - set(NEEDS):
        raise ValueError(f"defense {name!r}: unknown needs {sorted(unknown)}")

    def decorator(fn: Callable) -> Callable:
        _DEFENSES.add(name, Defense(name, params, needs, fn))
        return fn

    return decorator


list_defenses = _DEFENSES.names
get_defense = _DEFENSES.get


_FILTER_SPEC = re.compile(r"filter:(?P<detector>[\w-]+)@(?P<percent>[^%]+)%")
_SPEC = re.compile(r"(?P<name>[\w-]+)(\((?P<args>[^()]*)\))?")


def parse_defense(spec: str) -> tuple[str, object]:
    """``"filter:slof@5%"`` -> ("filter", FilterParams("slof", 0.05)); ``"roclip(pool_size=256)"``
    -> ("roclip", RoClipParams(pool_size=256)); a bare name takes the defaults."""
    if match := _FILTER_SPEC.fullmatch(spec):
        name, values = (
            "filter",
            {"detector": match["detector"], "fraction": _number(spec, match["percent"]) / 100},
        )
    elif match := _SPEC.fullmatch(spec.strip()):
        name, values = match["name"], {}
        for item in filter(None, (part.strip() for part in (match["args"] or "").split(","))):
            key, _, value = item.partition("=")
            values[key.strip()] = value.strip()
    else:
        raise UsageError(
            f"defense {spec!r}: write name or name(key=value, ...), or a filter as "
            "filter:<detector>@<percent>% (e.g. filter:slof@5%)"
        )
    params_cls = get_defense(name).params
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    if unknown := sorted(set(values) - set(fields)):
        raise UsageError(f"defense {spec!r}: {name} has no parameter {unknown}; it has {sorted(fields)}")
    hints = typing.get_type_hints(params_cls)
    typed = {key: _convert(spec, hints[key], value) for key, value in values.items()}
    return name, params_cls(**typed)


def _number(spec: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"defense {spec!r}: {text!r} is not a number") from None


def _convert(spec: str, hint: object, value: object) -> object:
    """A spec's text value as the parameter's type (int, float, str, or a tuple of floats)."""
    if not isinstance(value, str) or hint is str:
        return value
    if hint is int:
        number = _number(spec, value)
        if number != int(number):
            raise UsageError(f"defense {spec!r}: {value!r} is not a whole number")
        return int(number)
    if hint is float:
        return _number(spec, value)
    return tuple(_number(spec, item) for item in value.split())  # tuple[float, ...]


def apply_defense(spec: str, context: DefenseContext) -> DefenseOutcome:
    name, params = parse_defense(spec)
    return get_defense(name).run(context, params)


@dataclass(frozen=True)
class NoParams:
    """A defense without parameters."""


@register_defense("none", NoParams, needs=("model",))
def no_defense(context: DefenseContext, params: NoParams) -> DefenseOutcome:
    """The undefended model itself: the matrix's baseline row."""
    return DefenseOutcome(context.model, 0.0)
