"""The paper's Fig 5: the backdoor against the training-set size at fixed poison counts (left; and
the same data's ASR against the poison rate) and against the model size (right)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from poisonclip.report.figure_registry import FigureSpec, register_figure
from poisonclip.report.formatting import TRAINING_DATA_KEYS
from poisonclip.report.line_plot import ASR_CHANCE, Z_CHANCE, LinePlot

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


def _pairs_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x / 1000:g}k"


def _model_name(x: float, rows: Sequence[ResultRow]) -> str:
    return ", ".join(sorted({r.get("train.model") for r in rows}))


def _model_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{_model_name(x, rows)}\n{x / 1000:,.0f}k"


def _total_params(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{rows[0].get('num_params'):,}"


register_figure(
    FigureSpec(
        "asr_vs_rate",
        "Attack success rate vs poison rate (not a figure of the paper)",
        "ASR against the poison rate (poisons ÷ training pairs), one line per clean-data size: lines "
        "that coincide mean the rate decides; lines apart mean the count does (paper Fig 5 left: "
        f"a count threshold, not a rate). An extra view of Fig 5 left's data. {ASR_CHANCE}",
        LinePlot(
            "poison_rate",
            "asr",
            "poison rate",
            "attack success rate",
            series=("data.num_train",),
            explained=("poison_count", *TRAINING_DATA_KEYS),
            log_x=True,
        ),  # fmt: skip
    )
)
register_figure(
    FigureSpec(
        "fig5_left",
        "Fig 5 left — backdoor z-score vs training-set size at fixed poison counts",
        f"Clean pairs in the training set (log scale), one line per poison count, consistent "
        f"placement. {Z_CHANCE} Paper (50k-3M pairs): at 300 poisons z is nearly constant; at 75 it "
        "holds up to 1M and drops at 2-3M — a threshold count, not a steady decline with the rate.",
        LinePlot(
            "data.num_train",
            "zscore",
            "clean training pairs",
            "backdoor z-score",
            series=("poison_count",),
            explained=TRAINING_DATA_KEYS,
            log_x=True,
            tick=_pairs_tick,
        ),  # fmt: skip
    )
)
register_figure(
    FigureSpec(
        "fig5_right",
        "Fig 5 right — backdoor z-score vs model size",
        "x: parameters of the image encoder (log scale; the table also gives the total, dominated "
        "here by the text token embedding); dots are single models, to show the spread. "
        f"{Z_CHANCE} Paper: a 1M-parameter model is never backdoored, 5M ones vary widely "
        "(z 0.3 to 5.4), 30M ones reliably (z 5.1-5.9).",
        LinePlot(
            "num_params_visual",
            "zscore",
            "image-encoder parameters",
            "backdoor z-score",
            explained=("train.model",),
            log_x=True,
            tick=_model_tick,
            columns=(("model", _model_name), ("total params", _total_params)),
        ),  # fmt: skip
    )
)
