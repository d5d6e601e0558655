"""The paper's targeted-poisoning figure: Fig 2 left (success rate vs poisons per target, zero-shot
and linear probe)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.report.figure_registry import FigureSpec, Table, register_figure
from poisonclip.report.formatting import column_title, format_value, mean_pm_std
from poisonclip.report.line_plot import TOY_RATES, LinePlot, plot_classifiers

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


# Fig 2 left's downstream classifiers, one line each: (metric, legend text).
_TARGETED_CLASSIFIERS = (("zero_shot_success_rate", "zero-shot"), ("probe_success_rate", "linear probe"))


def _per_target_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x:,}\n{statistics.fmean(r.get('target_poison_rate') for r in rows):.3%}"


def _change_from_clean(rows: Sequence[ResultRow], clean: Sequence[ResultRow], metric: str) -> str:
    """Mean ± std over seeds of ``metric`` minus the same seed's clean model, in points."""
    clean_by_seed = {r.seed: r.get(metric) for r in clean}
    changes = [100 * (r.get(metric) - clean_by_seed[r.seed]) for r in rows if r.seed in clean_by_seed]
    return mean_pm_std(changes, 1) if changes else "—"


def _render_targeted(rows: Sequence[ResultRow], path: Path) -> Table:
    """Fig 2 left on one axes: a line per classifier (and per other setting that varies, e.g. the
    caption set), drawn as ``LinePlot`` draws one (0 poisons per target: the clean-model band)."""

    def chance(ax) -> None:  # a prediction drawn uniformly from the wrong classes
        for classes in sorted({r.get("num_classes") for r in rows}):
            ax.axhline(1 / (classes - 1), color="grey", ls=":", lw=1,
                       label=f"1/(classes − 1) = {1 / (classes - 1):.1%}")  # fmt: skip

    plot = LinePlot(
        "poisons_per_target",
        "zero_shot_success_rate",
        "poisons per target (and their share of the training set)",
        "targeted success rate (x′ classified as y′)",
        log_x=True,
        tick=_per_target_tick,
    )
    series_keys, groups, lines = plot_classifiers(rows, path, plot, _TARGETED_CLASSIFIERS, chance)

    table_rows = []
    for line in lines:
        by_x = groups[(), line]
        clean = by_x.get(0, [])
        for x in sorted(by_x):
            group = by_x[x]
            table_rows.append(
                (
                    *(str(v) for v in line),
                    f"{x:,}",
                    format_value(
                        "target_poison_rate", statistics.fmean(r.get("target_poison_rate") for r in group)
                    ),
                    f"{statistics.fmean(r.get('poison_count') for r in group):,.0f}",
                    format_value("poison_rate", statistics.fmean(r.get("poison_rate") for r in group)),
                    str(len(group)),
                    f"{sum(r.get('num_targets') for r in group):,}",
                    *(mean_pm_std([r.get(metric) for r in group], 3) for metric, _ in _TARGETED_CLASSIFIERS),
                    f"{statistics.fmean(r.get('zero_shot_mean_rank') for r in group):.2f}",
                    mean_pm_std([r.get("zero_shot_acc") for r in group], 3),
                    _change_from_clean(group, clean, "zero_shot_acc"),
                    mean_pm_std([r.get("probe_acc") for r in group], 3),
                )
            )
    columns = (
        *(column_title(k) for k in series_keys),
        "poisons per target",
        "per target ÷ training pairs",
        "poisons in all",
        "poison rate",
        "models",
        "attacks",
        "zero-shot success",
        "linear-probe success",
        "mean zero-shot rank of y′",
        "clean zero-shot top-1",
        "change vs clean model (points)",
        "clean probe top-1",
    )
    return Table(columns, tuple(table_rows))


register_figure(
    FigureSpec(
        "fig2_left",
        "Fig 2 left — targeted poisoning success rate vs poisons per target",
        "The fraction of attacks (target image x′, wrong label y′) in which the classifier puts y′ "
        "first for x′, against the poisons added per target (log scale; ticks also give one target's "
        "poisons as a share of the training set), for the zero-shot classifier and a linear probe "
        "fit on clean held-out embeddings: mean ± std over seeds of each model's rate over its K "
        "targets (dots: single models). Chance: dashed lines with bands, in each classifier's "
        "colour, score the same targets on the clean model (0 poisons); the dotted grey line is "
        "1/(classes − 1), the rate of a prediction drawn uniformly from the wrong classes. The "
        "table gives the clean zero-shot accuracy (test images without the targets) and its change "
        "from the same seed's clean model. Paper (CC3M, 1-512 poisons, 32 models a point): 3 "
        "poisons (0.0001%) → 40% zero-shot success; YFCC-15M: 15 → 20%; the linear probe is "
        f"vulnerable exactly when the zero-shot classifier is; clean accuracy unchanged. {TOY_RATES}",
        _render_targeted,
    )
)
