"""How grid cells and numbers are written in figures and tables: each cell key's column title and
legend text, table cells, mean ± std, the order of cell values, the keys that vary.

Rows are ``poisonclip.experiments.store.ResultRow``s; ``row.get(key)`` reads a cell field
(``poison_count``, ``data.num_train``, ``train.model`` ...) or a metric (``zscore``, ``asr`` ...).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow

# key -> (column title, legend/panel text for one value); also the order keys are listed in
_NAMES: dict[str, tuple[str, str]] = {
    "data.train": ("training data", "{}"),  # a user's files (data/files.py)
    "data.separator": ("CSV separator", "separator {!r}"),  # a tab must not be a blank legend
    "data.num_train": ("clean pairs", "{:,} clean pairs"),
    "train.model": ("model", "{}"),
    "train.epochs": ("epochs", "{} epochs"),
    "poison_count": ("poisons", "{:,} poisons"),
    "placement": ("poison placement", "poisons: {} patch"),
    "eval_placement": ("test placement", "test images: {} patch"),
    "patch_size": ("patch (px)", "{0}×{0} patch"),
    "trigger": ("trigger", "{}"),
    "target_label": ("target", "target {!r}"),
    "poison_rate": ("poison rate", "{:.3%}"),
    "poisons_per_target": ("poisons per target", "{:,} poisons per target"),
    "num_targets": ("targets per model", "{} targets per model"),
    "captions": ("caption set", "captions: {}"),
    "eval_templates": ("zero-shot prompts", "prompts: {}"),
    "num_params_visual": ("image-encoder params", "{:,}"),
}

# Keys a backdoor trigger sets by itself (patch, placement, its other parameters): figures group rows
# by ``trigger`` and show these only where they vary among one trigger's rows (another trigger's
# rows may not have them at all).
TRIGGER_KEYS = ("patch_size", "placement", "eval_placement", "trigger_params")


# A user's training data (data/files.py): named by the number of its pairs (``data.num_train``) where
# a figure draws against that, as for the synthetic data.
TRAINING_DATA_KEYS = ("data.train", "data.fingerprint")


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


def varying_keys(rows: Sequence[ResultRow], exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose value differs between ``rows``: known ones in ``_NAMES`` order, then the rest."""
    order = list(_NAMES)
    keys = sorted(
        {k for r in rows for k in r.cell} - set(exclude),
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    return [k for k in keys if len({repr(r.cell.get(k)) for r in rows}) > 1]


def sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in values)
