"""A defense's settings and inputs as a user gives them, checked against what the defense takes:
its parameter dataclass and ``Defense.needs``. ``names`` say how the user named each field or
input (the command line's flags), for the messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from poisonclip.defend.registry import Defense
from poisonclip.errors import UsageError


def defense_params(
    defense: Defense, values: Mapping[str, object], names: Mapping[str, str] | None = None
) -> object:
    """``defense.params`` from ``values`` (field name → value; None: the field's default). A value
    for a field that this defense's parameters lack is refused; lists become tuples."""
    names = names or {}
    given = {name: value for name, value in values.items() if value is not None}
    fields = {f.name for f in dataclasses.fields(defense.params)}
    if foreign := sorted(names.get(name, name) for name in given if name not in fields):
        raise UsageError(f"{', '.join(foreign)} do(es) not apply to defense {defense.name}")
    return defense.params(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def check_defense_inputs(defense: Defense, given: Mapping[str, bool], names: Mapping[str, str]) -> None:
    """Refuse a missing input the defense needs, and a given one it does not use; ``given``: which
    of the inputs (``model``, ``dataset``, ``clean``: the ``DefenseContext`` fields) were given."""
    if missing := [names[need] for need in defense.needs if not given[need]]:
        raise UsageError(f"defense {defense.name} needs {' and '.join(missing)}")
    if unused := [names[need] for need, value in given.items() if value and need not in defense.needs]:
        raise UsageError(f"defense {defense.name} does not use {' or '.join(unused)}")
