"""Package attributes imported on first use (PEP 562), so that ``import poisonclip.data.io`` or
``poisonclip --help`` does not pay for torch, open_clip and scikit-learn."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``: each module in ``modules``
    gives the names it maps to, imported when one of them is first read (a module that gives its
    own name, ``package.name`` giving ``name``, is that submodule)."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        value = module if exports[name] == f"{package}.{name}" else getattr(module, name)
        vars(importlib.import_module(package))[name] = value  # read once: later reads skip this
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__, sorted(exports)
