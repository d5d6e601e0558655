"""The figure registry: a figure is a ``FigureSpec``, a name (what experiment files list in
``figures = [...]``), a title, a caption, and ``render(rows, path) -> Table``, which writes a PNG
and returns the table of every number it plotted.

A new figure is one ``register_figure(FigureSpec(...))``; most are a ``LinePlot``
(``poisonclip.report.line_plot``). The paper's figures (Figs 2-6) are in ``backdoor_figures``,
``targeted_figures``, ``similarity_figures`` and ``scale_figures``, the attack × defense matrix's
in ``defense_figures``; importing ``poisonclip.report`` registers them all. They share
``formatting`` (cell names, numbers) and ``plotting`` (matplotlib, imported on first draw).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.experiments.grid import FIGURES

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


@dataclass(frozen=True)
class Table:
    """The numbers behind a figure, formatted: ``columns`` and one tuple of strings per row."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str  # what is plotted, the reference (chance) line, and the paper's finding
    render: Callable[[Sequence[ResultRow], Path], Table]


_FIGURES: dict[str, FigureSpec] = {}


def register_figure(spec: FigureSpec) -> FigureSpec:
    if spec.name in _FIGURES:
        raise ValueError(f"figure {spec.name!r} registered twice")
    if spec.name not in FIGURES:  # experiment files could not name it
        raise ValueError(f"figure {spec.name!r} is not in poisonclip.experiments.grid.FIGURES")
    _FIGURES[spec.name] = spec
    return spec


def list_figures() -> list[str]:
    """Registered figure names in ``FIGURES`` order (the paper's), whichever module registered them."""
    return [name for name in FIGURES if name in _FIGURES]


def get_figure(name: str) -> FigureSpec:
    return _FIGURES[name]
