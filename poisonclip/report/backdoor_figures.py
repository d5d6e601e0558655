"""The paper's backdoor figures: Fig 2 right (ASR vs poisons, zero-shot and linear probe), Fig 4
(poison × test placement) and Fig 6 (patch size)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.report.figure_registry import FigureSpec, Table, register_figure
from poisonclip.report.formatting import column_title, format_value, mean_pm_std
from poisonclip.report.line_plot import (
    ASR_CHANCE,
    TOY_RATES,
    Z_CHANCE,
    LinePlot,
    count_tick,
    plot_classifiers,
)

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


# Fig 2 right's downstream classifiers (paper §4.3): (metric, legend text).
_BACKDOOR_CLASSIFIERS = (("asr", "zero-shot"), ("probe_asr", "linear probe"))


def _render_backdoor_asr(rows: Sequence[ResultRow], path: Path) -> Table:
    """Fig 2 right: ASR against poisons for the zero-shot classifier and a linear probe, each with
    its natural rate (dotted) and its clean-model band."""
    plot = LinePlot("poison_count", "asr", "poisons added (and poison rate)", "attack success rate",
                    log_x=True, tick=count_tick)  # fmt: skip
    series_keys, groups, lines = plot_classifiers(rows, path, plot, _BACKDOOR_CLASSIFIERS)
    table_rows = [
        (
            *(str(v) for v in line),
            f"{x:,}",
            format_value("poison_rate", statistics.fmean(r.get("poison_rate") for r in group)),
            str(len(group)),
            mean_pm_std([r.get("asr") for r in group], 3),
            f"{statistics.fmean(r.get('natural_rate') for r in group):.3f}",
            mean_pm_std([r.get("probe_asr") for r in group], 3),
            f"{statistics.fmean(r.get('probe_natural_rate') for r in group):.3f}",
            mean_pm_std([r.get("zscore") for r in group]),
            f"{statistics.fmean(r.get('zero_shot_acc') for r in group):.3f}",
            f"{statistics.fmean(r.get('probe_acc') for r in group):.3f}",
        )
        for line in lines
        for x, group in sorted(groups[(), line].items())
    ]
    columns = (
        *(column_title(k) for k in series_keys),
        "poisons",
        "poison rate",
        "models",
        "zero-shot ASR",
        "zero-shot natural rate",
        "linear-probe ASR",
        "linear-probe natural rate",
        "z-score",
        "zero-shot top-1",
        "probe top-1",
    )
    return Table(columns, tuple(table_rows))


def _patch_area(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{statistics.fmean(r.get('patch_area_fraction') for r in rows):.2%}"


def _patch_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x}×{x}\n{_patch_area(x, rows)}"


def _paper_side(x: float, rows: Sequence[ResultRow]) -> str:
    """The side of a patch covering the same fraction of a 224×224 image (the paper's size)."""
    side = 224 * x / rows[0].get("data.image_size")
    return f"{side:.0f}×{side:.0f}"


register_figure(
    FigureSpec(
        "fig2_right",
        "Fig 2 right — backdoor attack success rate vs number of poisons",
        "Attack success rate (test images of other classes, patched, classified as the target) "
        "against the number of poisons added, mean ± std over seeds (dots: single models), for the "
        "zero-shot classifier and for a linear probe fit on the clean embeddings of one half of the "
        "test split and scored on the other half (paper §4.3). A dashed line with a band is each "
        f"classifier's clean model (0 poisons). {ASR_CHANCE} Paper (CC3M, 150-1,500 poisons): 300 "
        "poisons (0.01%) reach 50% ASR; the linear probe is vulnerable exactly when the zero-shot "
        f"classifier is. {TOY_RATES}",
        _render_backdoor_asr,
    )
)
register_figure(
    FigureSpec(
        "fig4",
        "Fig 4 — backdoor z-score vs number of poisons, placement at poisoning × at evaluation",
        "Left/right: poisons carry the patch in the upper-left corner (consistent) or anywhere "
        "(random); lines: the test images carry it consistently or randomly. Mean ± std over seeds. "
        f"{Z_CHANCE} Paper (CC3M): consistent poisoning gives z ≈ 2.5 at 75 poisons (0.0025%) and "
        "improves little with more; random poisoning gives z ≈ 0 at few poisons and far more at "
        f"many; consistent wins below ~300 poisons (0.01%), random above. {TOY_RATES}",
        LinePlot(
            "poison_count",
            "zscore",
            "poisons added (and poison rate)",
            "backdoor z-score",
            series=("eval_placement",),
            panels=("placement",),
            log_x=True,
            tick=count_tick,
        ),  # fmt: skip
    )
)
register_figure(
    FigureSpec(
        "fig6",
        "Fig 6 — backdoor z-score vs patch size",
        "Checkerboard side in pixels of the model's input (32×32 for the toy), with the fraction of "
        "the image area it covers; the table gives the side of a patch covering the same fraction of "
        "the paper's 224×224 images. Toy pixels are much coarser: one pixel is already 0.1% of the "
        "area (the paper's 4×4 is 0.03%, its 16×16 0.51%), so the toy's smallest patches match the "
        "paper's middle range, and a 1×1 'checkerboard' is a single white pixel. "
        f"{Z_CHANCE} Paper (0.0025% poisons): 2×2 fails, 4×4 works, 16×16 best, 32×32 maybe "
        "slightly worse.",
        LinePlot(
            "patch_size",
            "zscore",
            "patch side in pixels (and % of image area)",
            "backdoor z-score",
            log_x=True,
            tick=_patch_tick,
            columns=(("area", _patch_area), ("same area on 224×224", _paper_side)),
        ),  # fmt: skip
    )
)
