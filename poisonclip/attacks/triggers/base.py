"""A backdoor trigger is declared once: a frozen dataclass whose fields are its parameters.

Each field has a default and ``field(metadata={"help": ...})`` (plus ``"choices"`` for a fixed set of
strings); ``check()`` validates across fields and raises ``UsageError``. The CLI options
(``options.add_trigger_options``), the experiment-file keys of ``[backdoor]`` and ``[defense]`` and
their validation (``experiments/backdoor_trial.py``) are all derived from these specs, so a new
trigger is one decorated class in one file of this folder::

    @register_trigger("mine")
    @dataclass(frozen=True)
    class Mine(Trigger):
        strength: float = field(default=0.1, metadata={"help": "..."})

        def apply(self, images, generator):  # uint8 [N, 3, S, S] -> Triggered
            ...

A trigger is given in pixels of the model's input (``data/resolution.py``): ``apply`` receives the
images at that size. Randomness that differs per image (e.g. a random patch position) comes from the
``generator`` the caller passes (the poison or evaluation seed); a fixed pattern (noise, a warping
field) from the trigger's own seed parameter, so poisoning and evaluation paste the identical
trigger. A trigger whose pattern is fitted (``badclip``) returns a fitted copy from ``fit`` and
exposes that state as JSON (``state`` / ``with_state``), stored beside the poison set.

torch is imported inside functions only: the CLI builds its parser from these specs, and
``poisonclip --help`` must not load torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from poisonclip.errors import UsageError
from poisonclip.registry import Registry

if TYPE_CHECKING:
    import torch

STATE = "fitted_state"  # field metadata key: a fitted value, not a parameter (never an option or key)
PARAMETER_TYPES = (int, float, str)  # what a CLI option and a TOML value can hold


@dataclass(frozen=True)
class Triggered:
    """Triggered copies of the images, and one record per image for its manifest row."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    records: list[dict]  # per image: fields added to its manifest row, e.g. {"patch": {"y", "x", "size"}}


@dataclass(frozen=True)
class FitContext:
    """What an attacker has for fitting a trigger's pattern (only ``badclip`` uses it).

    ``load_images(indices)`` decodes candidate training images (uint8 [k, 3, S, S], at the model's
    input size; unreadable ones are left out), ``captions`` are the training captions that name
    ``target_label``, and ``surrogate()``, where the caller can build one, returns a model and its
    config (a sweep trains a clean model on its own data).
    """

    target_label: str
    captions: Sequence[str]
    num_images: int
    load_images: Callable[[list[int]], torch.Tensor]
    surrogate: Callable[[], tuple[torch.nn.Module, dict]] | None = None


@dataclass(frozen=True)
class Trigger:
    """Base of the trigger specs (see the module docstring); ``name`` is set by ``register_trigger``."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in parameters(type(self)):
            value, kind = getattr(self, f.name), hints[f.name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # alpha = 1 and 1.0: one trigger
            elif isinstance(value, bool) or not isinstance(value, kind):
                raise UsageError(
                    f"trigger {self.name!r}: {f.name} = {value!r} is not of type {kind.__name__}"
                )
            if (choices := f.metadata.get("choices")) and value not in choices:
                raise UsageError(f"trigger {self.name!r}: {f.name} must be one of {choices}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field validation (``UsageError``); the types and choices are checked already."""

    def check_image_size(self, image_size: int) -> None:
        """Refuse an image size the trigger cannot be applied at (a patch that does not fit)."""

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        """Triggered copies of ``images`` (uint8 [N, 3, S, S]; left unchanged)."""
        raise NotImplementedError

    def fit(self, context: FitContext) -> Trigger:
        """The trigger ready to apply: itself, unless its pattern is fitted to the attacker's data."""
        return self

    def state(self) -> dict:
        """The fitted state as JSON (stored as the poison set's ``trigger.json``); {} if none."""
        return {}

    def with_state(self, state: dict) -> Trigger:
        """This trigger with a stored fitted ``state`` (as ``state()`` returned it)."""
        if state:
            raise UsageError(f"trigger {self.name!r} has no fitted state, got {sorted(state)}")
        return self

    def area_fraction(self, image_size: int) -> float | None:
        """Fraction of the image area the trigger covers, where it covers a part (a patch)."""
        return None

    def values(self) -> dict[str, Any]:
        """The parameters as given: {name: value}."""
        return {f.name: getattr(self, f.name) for f in parameters(type(self))}

    def record(self) -> dict:
        """Everything needed to rebuild this exact trigger (``trigger_from_record``)."""
        return {"name": self.name, "params": self.values(), "state": self.state()}


_TRIGGERS: Registry[type[Trigger]] = Registry("trigger")


def register_trigger(name: str) -> Callable[[type[Trigger]], type[Trigger]]:
    """Register a frozen ``Trigger`` dataclass under ``name`` (put it above ``@dataclass``)."""

    def decorator(cls: type[Trigger]) -> type[Trigger]:
        if not (isinstance(cls, type) and issubclass(cls, Trigger) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"trigger {name!r} must be a dataclass subclass of Trigger")
        if not cls.__dataclass_params__.frozen:
            raise TypeError(f"trigger {name!r} must be a frozen dataclass")
        hints = typing.get_type_hints(cls)
        for f in parameters(cls):
            if hints[f.name] not in PARAMETER_TYPES or f.default is dataclasses.MISSING:
                raise TypeError(
                    f"trigger {name!r}: parameter {f.name} needs a default and type int, float or str"
                )
        cls.name = name
        _TRIGGERS.add(name, cls)
        return cls

    return decorator


list_triggers = _TRIGGERS.names
get_trigger = _TRIGGERS.get


def parameters(cls: type[Trigger]) -> list[dataclasses.Field]:
    """The trigger's parameters: its fields apart from fitted state."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get(STATE)]


def parameter_names(name: str) -> list[str]:
    return [f.name for f in parameters(get_trigger(name))]


def build_trigger(name: str, values: dict[str, Any]) -> Trigger:
    """The trigger ``name`` with ``values`` (others at their defaults); an unknown key names the
    trigger's parameters."""
    cls = get_trigger(name)
    allowed = parameter_names(name)
    if unknown := sorted(set(values) - set(allowed)):
        raise UsageError(
            f"trigger {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters: {', '.join(allowed) or 'none'}"
        )
    return cls(**values)


def trigger_from_record(record: dict) -> Trigger:
    """Rebuild the trigger ``Trigger.record()`` described, fitted state included."""
    try:
        name, params, state = record["name"], record["params"], record.get("state") or {}
    except (KeyError, TypeError) as err:
        raise UsageError(f"not a trigger record (needs name and params): {record!r}") from err
    return build_trigger(name, params).with_state(state)


def trigger_generator(seed: int) -> torch.Generator:
    """A generator for a trigger's fixed pattern, apart from the caller's per-image generator."""
    import torch

    return torch.Generator().manual_seed(seed)


def to_pixels(values: torch.Tensor) -> Triggered:
    """A whole-image trigger's float pixel values [N, 3, S, S] rounded and clipped to 8 bits; its
    records are empty (nothing differs between images)."""
    import torch

    return Triggered(values.round().clamp(0, 255).to(torch.uint8), [{} for _ in range(len(values))])
