"""The figure registry and what every figure shares: tables, cell names and formats, matplotlib.

Each figure is a ``FigureSpec``: a name (what experiment files list in ``figures = [...]``), a
title, a caption, and ``render(rows, path) -> Table``, which writes a PNG and returns the table
of every number it plotted. A new figure is one ``register_figure(FigureSpec(...))``; most are a
``LinePlot`` (``poisonclip.report.line_plot``). matplotlib is imported on first draw. The paper's
figures (Figs 2-6) are in ``backdoor_figures``, ``targeted_figures``, ``similarity_figures`` and
``scale_figures``, the attack × defense matrix's in ``defense_figures``; importing
``poisonclip.report`` registers them all.

Rows are ``poisonclip.experiments.store.ResultRow``s; ``row.get(key)`` reads a cell field
(``poison_count``, ``data.num_train``, ``train.model`` ...) or a metric (``zscore``, ``asr`` ...).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poisonclip.data.io import atomic_path
from poisonclip.experiments.grid import FIGURES

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow

# key -> (column title, legend/panel text for one value); also the order keys are listed in
_NAMES: dict[str, tuple[str, str]] = {
    "data.num_train": ("clean pairs", "{:,} clean pairs"),
    "train.model": ("model", "{}"),
    "train.epochs": ("epochs", "{} epochs"),
    "poison_count": ("poisons", "{:,} poisons"),
    "placement": ("poison placement", "poisons: {} patch"),
    "eval_placement": ("test placement", "test images: {} patch"),
    "patch_size": ("patch (px)", "{0}×{0} patch"),
    "target_label": ("target", "target {!r}"),
    "poison_rate": ("poison rate", "{:.3%}"),
    "poisons_per_target": ("poisons per target", "{:,} poisons per target"),
    "num_targets": ("targets per model", "{} targets per model"),
    "captions": ("caption set", "captions: {}"),
    "eval_templates": ("zero-shot prompts", "prompts: {}"),
    "num_params_visual": ("image-encoder params", "{:,}"),
}


def column_title(key: str) -> str:
    return _NAMES.get(key, (key, ""))[0]


def describe(key: str, value: Any) -> str:
    template = _NAMES.get(key, ("", ""))[1]
    return template.format(value) if template else f"{key} = {value}"


def format_value(key: str, value: Any) -> str:
    """A table cell: rates as percentages, counts with thousands separators."""
    if key.endswith("_rate"):
        return f"{value:.3%}"
    return (
        f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_pm_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", bbox_extra_artists=legends)
    pyplot().close(fig)


def varying_keys(rows: Sequence[ResultRow], exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose value differs between ``rows``: known ones in ``_NAMES`` order, then the rest."""
    order = list(_NAMES)
    keys = sorted(
        {k for r in rows for k in r.cell} - set(exclude),
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    return [k for k in keys if len({repr(r.cell.get(k)) for r in rows}) > 1]


def place_legend(ax) -> None:
    """Inside the axes when short; to the right of them when it would cover the data."""
    if len(ax.get_legend_handles_labels()[1]) <= 4:
        ax.legend(fontsize=7)
    else:
        # Outside the layout, so the axes keep their size; save_figure widens the image to include it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)).set_in_layout(False)


def subplots(count: int, width: float, height: float, columns: int = 4):
    """A figure with ``count`` panels, at most ``columns`` a row: (figure, list of axes)."""
    plt = pyplot()
    ncols = min(count, columns)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=True
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in values)
