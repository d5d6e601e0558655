"""The paper's Fig 3: pairwise image similarity predicts a shared label (left), and the similarity of
clean vs patched test-image pairs (right), the basis of the backdoor z-score."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.report.figure_registry import FigureSpec, Table, register_figure
from poisonclip.report.formatting import describe, mean_pm_std, sort_key, varying_keys
from poisonclip.report.plotting import place_legend, pyplot, save_figure, subplots

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


def _one_row_per_model(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Clean-image statistics depend on the trained model only: keep one row per model."""
    seen: dict[tuple[str, int], ResultRow] = {}
    for r in rows:
        seen.setdefault((r.train_hash, r.seed), r)
    return list(seen.values())


def _render_same_label(rows: Sequence[ResultRow], path: Path, min_pairs: int = 100) -> Table:
    plt = pyplot()
    models = _one_row_per_model(rows)
    counts = sorted({r.get("poison_count") for r in models})
    edges = models[0].curves["similarity_edges"]
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    table_rows = []
    total_pairs = total_same = 0
    for i, count in enumerate(counts):
        group = [r for r in models if r.get("poison_count") == count]
        sums = {k: [sum(v) for v in zip(*(r.curves[k] for r in group), strict=True)]
                for k in ("pairs", "same_label", "same_prediction")}  # fmt: skip
        total_pairs, total_same = total_pairs + sum(sums["pairs"]), total_same + sum(sums["same_label"])
        kept = [b for b, n in enumerate(sums["pairs"]) if n >= min_pairs]  # sparse bins are noise
        centres = [(edges[b] + edges[b + 1]) / 2 for b in kept]
        label = f"{describe('poison_count', count)} ({len(group)} models)"
        for key, style, what in (
            ("same_label", "o-", "same label"),
            ("same_prediction", "--", "same prediction"),
        ):
            p = [sums[key][b] / sums["pairs"][b] for b in kept]
            ax.plot(centres, p, style, color=colours[i % len(colours)], ms=3,
                    label=f"{label}: {what}")  # fmt: skip
        table_rows += [
            (
                f"{count:,}",
                f"[{edges[b]:.2f}, {edges[b + 1]:.2f})",
                f"{sums['pairs'][b]:,}",
                f"{sums['same_label'][b] / sums['pairs'][b]:.4f}",
                f"{sums['same_prediction'][b] / sums['pairs'][b]:.4f}",
            )
            for b in kept
        ]
    ax.axhline(total_same / total_pairs, color="grey", ls=":", label="random pair (chance)")
    ax.set_yscale("log", nonpositive="mask")  # a bin with no same-label pair has no point
    ax.set_xlabel("cosine similarity of the two image embeddings")
    ax.set_ylabel("P(same label)")
    ax.grid(alpha=0.3)
    place_legend(ax)
    save_figure(fig, path)
    columns = ("poisons", "similarity bin", "pairs", "P(same label)", "P(same zero-shot prediction)")
    return Table(columns, tuple(table_rows))


def _pooled_normal(moments: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean and std of the union of equally sized groups, each given as (mean, std)."""
    mean = statistics.fmean(m for m, _ in moments)
    second = statistics.fmean(sd**2 + m**2 for m, sd in moments)
    return mean, math.sqrt(max(second - mean**2, 0.0))


def _render_histograms(rows: Sequence[ResultRow], path: Path) -> Table:
    keys = [
        k for k in varying_keys(rows) if k in ("poison_count", "placement", "eval_placement", "patch_size")
    ]
    panels: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        panels.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    order = sorted(panels, key=sort_key)
    fig, axes = subplots(len(order), 4.6, 3.6)
    edges = rows[0].curves["histogram_edges"]
    widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    table_rows = []
    for ax, panel in zip(axes, order, strict=True):
        group = panels[panel]
        for key, label in (("clean_pairs", "clean pairs"), ("patched_pairs", "patched pairs")):
            counts = [sum(v) for v in zip(*(r.curves[key] for r in group), strict=True)]
            density = [c / sum(counts) / w for c, w in zip(counts, widths, strict=True)]
            ax.stairs(density, edges, fill=True, alpha=0.5, label=label)
        mean, std = _pooled_normal([(r.get("clean_pair_mean"), r.get("clean_pair_std")) for r in group])
        grid = [edges[0] + i * (edges[-1] - edges[0]) / 400 for i in range(401)]
        pdf = [math.exp(-0.5 * ((v - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for v in grid]
        ax.plot(grid, pdf, "k-", lw=1, label=f"normal fit to clean pairs ({mean:.2f} ± {std:.2f})")
        z = mean_pm_std([r.get("zscore") for r in group])
        title = ", ".join(describe(k, v) for k, v in zip(keys, panel, strict=True)) or "all results"
        ax.set_title(f"{title}\nz = {z} ({len(group)} models)", fontsize=9)
        ax.set_xlabel("cosine similarity of image embeddings")
        ax.legend(fontsize=7, loc="upper left")
        table_rows.append(
            (
                title,
                str(len(group)),
                mean_pm_std([r.get("clean_pair_mean") for r in group], 3),
                mean_pm_std([r.get("clean_pair_std") for r in group], 3),
                mean_pm_std([r.get("patched_pair_mean") for r in group], 3),
                z,
                mean_pm_std([r.get("asr") for r in group], 3),
            )
        )
    axes[0].set_ylabel("density")
    save_figure(fig, path)
    columns = (
        "setting",
        "models",
        "clean-pair mean",
        "clean-pair std",
        "patched-pair mean",
        "z-score",
        "ASR",
    )
    return Table(columns, tuple(table_rows))


register_figure(
    FigureSpec(
        "fig3_left",
        "Fig 3 left — pairwise image similarity predicts the same label",
        "For all pairs of clean (non-target) test images, the probability that the two share their "
        "true label (solid) or their zero-shot prediction (dashed), per bin of the cosine similarity "
        "of their embeddings (log scale), pooled over seeds. The grey line is a random pair's chance "
        "of sharing a label. Paper: an exponential relation, which is why the backdoor z-score, a "
        "statement about pairwise similarity, measures attack success.",
        _render_same_label,
    )
)
register_figure(
    FigureSpec(
        "fig3_right",
        "Fig 3 right — similarity of clean pairs vs patched pairs",
        "Histograms (density) of the cosine similarity over all pairs of non-target test images, "
        "clean and with the patch pasted on, pooled over seeds; one panel per setting. The black "
        "curve is the normal distribution fit to the clean pairs (their exact mean and standard "
        "deviation, pooled over models), as the paper draws it. Paper (0.01% "
        "poisons, CC3M): patched pairs 0.78 vs clean pairs ≈ 0.1, about five standard deviations.",
        _render_histograms,
    )
)
