"""The paper's figures (Figs 2-6), drawn only from stored sweep results: a registry.

Each figure is a ``FigureSpec``: a name (what experiment files list in ``figures = [...]``), a
title, a caption, and ``render(rows, path) -> Table``, which writes a PNG and returns the table
of every number it plotted. A new figure is one ``register_figure(FigureSpec(...))``; most are a
``LinePlot`` (mean ± std over seeds against one grid axis). matplotlib is imported on first draw.

Rows are ``poisonclip.experiments.store.ResultRow``s; ``row.get(key)`` reads a cell field
(``poison_count``, ``data.num_train``, ``train.model`` ...) or a metric (``zscore``, ``asr`` ...).
"""

from __future__ import annotations

import math
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
    "trigger": ("trigger", "{}"),
    "target_label": ("target", "target {!r}"),
    "poison_rate": ("poison rate", "{:.3%}"),
    "poisons_per_target": ("poisons per target", "{:,} poisons per target"),
    "num_targets": ("targets per model", "{} targets per model"),
    "captions": ("caption set", "captions: {}"),
    "eval_templates": ("zero-shot prompts", "prompts: {}"),
    "num_params_visual": ("image-encoder params", "{:,}"),
}


def _column(key: str) -> str:
    return _NAMES.get(key, (key, ""))[0]


def _describe(key: str, value: Any) -> str:
    template = _NAMES.get(key, ("", ""))[1]
    return template.format(value) if template else f"{key} = {value}"


def _value(key: str, value: Any) -> str:
    """A table cell: rates as percentages, counts with thousands separators."""
    if key.endswith("_rate"):
        return f"{value:.3%}"
    return (
        f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_pm_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = _mean_std(values)
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
    """Registered figure names, in the paper's order."""
    return list(_FIGURES)


def get_figure(name: str) -> FigureSpec:
    return _FIGURES[name]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", bbox_extra_artists=legends)
    _pyplot().close(fig)


def varying_keys(rows: Sequence[ResultRow], exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose value differs between ``rows``: known ones in ``_NAMES`` order, then the rest."""
    order = list(_NAMES)
    keys = sorted(
        {k for r in rows for k in r.cell} - set(exclude),
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    return [k for k in keys if len({repr(r.cell.get(k)) for r in rows}) > 1]


def _legend(ax) -> None:
    """Inside the axes when short; to the right of them when it would cover the data."""
    if len(ax.get_legend_handles_labels()[1]) <= 4:
        ax.legend(fontsize=7)
    else:
        # Outside the layout, so the axes keep their size; _save widens the image to include it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)).set_in_layout(False)


def _subplots(count: int, width: float, height: float, columns: int = 4):
    """A figure with ``count`` panels, at most ``columns`` a row: (figure, list of axes)."""
    plt = _pyplot()
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


@dataclass(frozen=True)
class LinePlot:
    """``y`` against ``x``: mean ± std over seeds (band) and every seed (dots); a line per
    ``series`` value, a panel per ``panels`` value. Cell keys that vary but are neither named here
    nor ``explained`` by x join the series, so different settings are never averaged together.
    On a log x axis, x = 0 rows (0 poisons: clean models) are drawn as a horizontal band."""

    x: str  # a cell key or a metric
    y: str  # a metric: "zscore" or "asr"
    x_label: str
    y_label: str
    series: tuple[str, ...] = ()
    panels: tuple[str, ...] = ()
    explained: tuple[str, ...] = ()  # cell keys that x stands for (e.g. train.model for its size)
    log_x: bool = False
    tick: Callable[[float, Sequence[ResultRow]], str] | None = None  # x tick label from its rows
    columns: tuple[tuple[str, Callable[[float, Sequence[ResultRow]], str]], ...] = ()  # per-x extras

    def groups(self, rows: Sequence[ResultRow]) -> tuple[list[str], dict[tuple, dict[float, list]]]:
        """(series keys, {(panel values, series values): {x: rows}})."""
        named = (self.x, *self.explained, *self.series, *self.panels)
        series = [*self.series, *varying_keys(rows, exclude=named)]
        out: dict[tuple, dict[float, list]] = {}
        for r in rows:
            line = (tuple(r.get(k) for k in self.panels), tuple(r.get(k) for k in series))
            out.setdefault(line, {}).setdefault(r.get(self.x), []).append(r)
        return series, out

    def __call__(self, rows: Sequence[ResultRow], path: Path) -> Table:
        plt = _pyplot()
        series_keys, groups = self.groups(rows)
        panel_values = sorted({panel for panel, _ in groups}, key=sort_key)
        fig, axes = _subplots(len(panel_values), 5.2, 4)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        line_values = sorted({line for _, line in groups}, key=sort_key)
        table_rows = []
        for ax, panel in zip(axes, panel_values, strict=True):
            drawn = [line for line in line_values if (panel, line) in groups]
            for line in drawn:
                colour = colours[line_values.index(line) % len(colours)]
                label = (
                    ", ".join(_describe(k, v) for k, v in zip(series_keys, line, strict=True)) or "mean ± std"
                )
                by_x = groups[(panel, line)]
                self._draw_line(ax, by_x, colour, label, first=line == drawn[0])
                for x in sorted(by_x):
                    table_rows.append(self._table_row(panel, line, x, by_x[x]))
            self._decorate(ax, panel, rows)
        axes[0].set_ylabel(self.y_label)
        _save(fig, path)
        columns = (
            *(_column(k) for k in self.panels),
            *(_column(k) for k in series_keys),
            _column(self.x),
            *(name for name, _ in self.columns),
            "models",
            *(("poison rate",) if self.x != "poison_rate" else ()),
            "z-score",
            "ASR",
            "natural rate",
            "zero-shot top-1",
        )
        return Table(columns, tuple(table_rows))

    def _draw_line(self, ax, by_x: dict[float, list], colour: str, label: str, first: bool) -> None:
        """One series; its reference lines are named in the legend once (``first``), in its colour."""
        baseline = [r for x, rs in by_x.items() if self.log_x and x <= 0 for r in rs]
        xs = sorted(x for x in by_x if not (self.log_x and x <= 0))
        stats = [_mean_std([r.get(self.y) for r in by_x[x]]) for x in xs]
        means = [m for m, _ in stats]
        ax.plot(xs, means, "o-", color=colour, label=label)
        ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats], color=colour, alpha=0.2)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), [r.get(self.y) for r in by_x[x]], s=8, color=colour, alpha=0.5)
        if baseline:
            mean, std = _mean_std([r.get(self.y) for r in baseline])
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)
            ax.axhline(mean, color=colour, ls="--", lw=1, label="0 poisons (clean model)" if first else None)
        if self.y.endswith("asr"):  # ASR's chance level: the same images unpatched, called the target
            natural_rate = self.y.removesuffix("asr") + "natural_rate"  # probe_asr: probe_natural_rate
            natural = [statistics.fmean(r.get(natural_rate) for r in by_x[x]) for x in xs]
            ax.plot(xs, natural, ":", color=colour, label="natural rate (unpatched)" if first else None)

    def _decorate(self, ax, panel: tuple, rows: Sequence[ResultRow]) -> None:
        if self.y == "zscore":
            ax.axhline(0, color="grey", ls=":", lw=1, label="chance (z = 0)")
        if self.log_x:
            ax.set_xscale("log")
        xs = sorted({r.get(self.x) for r in rows if not (self.log_x and r.get(self.x) <= 0)})
        if self.tick is not None:
            labels = [self.tick(x, [r for r in rows if r.get(self.x) == x]) for x in xs]
            # long labels at close log positions (model names) would overlap: slant them
            slant = {"rotation": 25, "ha": "right"} if max(len(t.split("\n")[0]) for t in labels) > 8 else {}
            ax.set_xticks(xs, labels, fontsize=8, **slant)
            ax.minorticks_off()
        elif self.x.endswith("_rate"):
            from matplotlib.ticker import NullFormatter, PercentFormatter

            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(self.x_label)
        ax.set_title(", ".join(_describe(k, v) for k, v in zip(self.panels, panel, strict=True)), fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax)

    def _table_row(self, panel: tuple, line: tuple, x: float, rows: list) -> tuple[str, ...]:
        return (
            *(str(v) for v in panel),
            *(str(v) for v in line),
            _value(self.x, x),
            *(fn(x, rows) for _, fn in self.columns),
            str(len(rows)),
            *(
                (f"{statistics.fmean(r.get('poison_rate') for r in rows):.3%}",)
                if self.x != "poison_rate"
                else ()
            ),
            mean_pm_std([r.get("zscore") for r in rows]),
            mean_pm_std([r.get("asr") for r in rows], 3),
            f"{statistics.fmean(r.get('natural_rate') for r in rows):.3f}",
            f"{statistics.fmean(r.get('zero_shot_acc') for r in rows):.3f}",
        )


def _count_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x:,}\n{statistics.fmean(r.get('poison_rate') for r in rows):.2%}"


def _patch_area(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{statistics.fmean(r.get('patch_area_fraction') for r in rows):.2%}"


def _patch_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x}×{x}\n{_patch_area(x, rows)}"


def _paper_side(x: float, rows: Sequence[ResultRow]) -> str:
    """The side of a patch covering the same fraction of a 224×224 image (the paper's size)."""
    side = 224 * x / rows[0].get("data.image_size")
    return f"{side:.0f}×{side:.0f}"


def _pairs_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x / 1000:g}k"


def _model_name(x: float, rows: Sequence[ResultRow]) -> str:
    return ", ".join(sorted({r.get("train.model") for r in rows}))


def _model_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{_model_name(x, rows)}\n{x / 1000:,.0f}k"


def _total_params(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{rows[0].get('num_params'):,}"


_Z_CHANCE = (
    "The dotted grey line is chance (z = 0: patched test images no more alike than clean ones); a "
    "dashed line with a band, where present, is the clean model trained without poisons."
)
_ASR_CHANCE = (
    "Dotted lines: the natural rate — the same test images *unpatched* classified as the target — "
    "the level a clean model's ASR sits at."
)
_TOY_RATES = (
    "The toy needs far higher poison rates than CC3M (a tiny model on ~10k pairs vs a 30M-parameter "
    "model on 3M): compare the shapes of the curves, not the rates."
)


def _one_row_per_model(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Clean-image statistics depend on the trained model only: keep one row per model."""
    seen: dict[tuple[str, int], ResultRow] = {}
    for r in rows:
        seen.setdefault((r.train_hash, r.seed), r)
    return list(seen.values())


def _render_same_label(rows: Sequence[ResultRow], path: Path, min_pairs: int = 100) -> Table:
    plt = _pyplot()
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
        label = f"{_describe('poison_count', count)} ({len(group)} models)"
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
    _legend(ax)
    _save(fig, path)
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
    fig, axes = _subplots(len(order), 4.6, 3.6)
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
        title = ", ".join(_describe(k, v) for k, v in zip(keys, panel, strict=True)) or "all results"
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
    _save(fig, path)
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


# Fig 2 left's downstream classifiers, one line each: (metric, legend text).
_TARGETED_CLASSIFIERS = (("zero_shot_success_rate", "zero-shot"), ("probe_success_rate", "linear probe"))


def _per_target_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x:,}\n{statistics.fmean(r.get('target_poison_rate') for r in rows):.3%}"


def _change_from_clean(rows: Sequence[ResultRow], clean: Sequence[ResultRow], metric: str) -> str:
    """Mean ± std over seeds of ``metric`` minus the same seed's clean model, in points."""
    clean_by_seed = {r.seed: r.get(metric) for r in clean}
    changes = [100 * (r.get(metric) - clean_by_seed[r.seed]) for r in rows if r.seed in clean_by_seed]
    return mean_pm_std(changes, 1) if changes else "—"


def _draw_classifiers(
    ax, rows: Sequence[ResultRow], plots: Sequence[LinePlot], names: Sequence[str]
) -> tuple[list[str], dict[tuple, dict[float, list]], list[tuple]]:
    """One line per downstream classifier (``plots[j]`` draws metric ``names[j]``) and per other
    setting that varies, as ``LinePlot`` draws one; returns (series keys, groups, lines)."""
    colours = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    series_keys, groups = plots[0].groups(rows)  # no panels: groups are keyed ((), series values)
    lines = sorted((line for _, line in groups), key=sort_key)
    for i, line in enumerate(lines):
        setting = ", ".join(_describe(k, v) for k, v in zip(series_keys, line, strict=True))
        for j, (plot, name) in enumerate(zip(plots, names, strict=True)):
            colour = colours[(i * len(plots) + j) % len(colours)]
            plot._draw_line(
                ax, groups[(), line], colour, f"{name}, {setting}" if setting else name, i == j == 0
            )
    return series_keys, groups, lines


# Fig 2 right's downstream classifiers (paper §4.3): (metric, legend text).
_BACKDOOR_CLASSIFIERS = (("asr", "zero-shot"), ("probe_asr", "linear probe"))


def _render_backdoor_asr(rows: Sequence[ResultRow], path: Path) -> Table:
    """Fig 2 right: ASR against poisons for the zero-shot classifier and a linear probe, each with
    its natural rate (dotted) and its clean-model band."""
    plt = _pyplot()
    plots = [
        LinePlot("poison_count", metric, "poisons added (and poison rate)", "attack success rate",
                 log_x=True, tick=_count_tick)
        for metric, _ in _BACKDOOR_CLASSIFIERS
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series_keys, groups, lines = _draw_classifiers(
        ax, rows, plots, [name for _, name in _BACKDOOR_CLASSIFIERS]
    )
    ax.set_ylim(-0.03, 1.03)
    plots[0]._decorate(ax, (), rows)
    ax.set_ylabel(plots[0].y_label)
    _save(fig, path)
    table_rows = [
        (
            *(str(v) for v in line),
            f"{x:,}",
            _value("poison_rate", statistics.fmean(r.get("poison_rate") for r in group)),
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
        *(_column(k) for k in series_keys),
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


def _render_targeted(rows: Sequence[ResultRow], path: Path) -> Table:
    """Fig 2 left on one axes: a line per classifier (and per other setting that varies, e.g. the
    caption set), drawn as ``LinePlot`` draws one (0 poisons per target: the clean-model band)."""
    plt = _pyplot()
    plots = [
        LinePlot("poisons_per_target", metric, "poisons per target (and their share of the training set)",
                 "targeted success rate (x′ classified as y′)", log_x=True, tick=_per_target_tick)
        for metric, _ in _TARGETED_CLASSIFIERS
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series_keys, groups, lines = _draw_classifiers(
        ax, rows, plots, [name for _, name in _TARGETED_CLASSIFIERS]
    )
    for classes in sorted({r.get("num_classes") for r in rows}):
        ax.axhline(1 / (classes - 1), color="grey", ls=":", lw=1,
                   label=f"1/(classes − 1) = {1 / (classes - 1):.1%}")  # fmt: skip
    ax.set_ylim(-0.03, 1.03)
    plots[0]._decorate(ax, (), rows)
    ax.set_ylabel(plots[0].y_label)
    _save(fig, path)

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
                    _value(
                        "target_poison_rate", statistics.fmean(r.get("target_poison_rate") for r in group)
                    ),
                    f"{statistics.fmean(r.get('poison_count') for r in group):,.0f}",
                    _value("poison_rate", statistics.fmean(r.get("poison_rate") for r in group)),
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
        *(_column(k) for k in series_keys),
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
        f"vulnerable exactly when the zero-shot classifier is; clean accuracy unchanged. {_TOY_RATES}",
        _render_targeted,
    )
)
register_figure(
    FigureSpec(
        "fig2_right",
        "Fig 2 right — backdoor attack success rate vs number of poisons",
        "Attack success rate (test images of other classes, patched, classified as the target) "
        "against the number of poisons added, mean ± std over seeds (dots: single models), for the "
        "zero-shot classifier and for a linear probe fit on the clean embeddings of one half of the "
        "test split and scored on the other half (paper §4.3). A dashed line with a band is each "
        f"classifier's clean model (0 poisons). {_ASR_CHANCE} Paper (CC3M, 150-1,500 poisons): 300 "
        "poisons (0.01%) reach 50% ASR; the linear probe is vulnerable exactly when the zero-shot "
        f"classifier is. {_TOY_RATES}",
        _render_backdoor_asr,
    )
)
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
register_figure(
    FigureSpec(
        "asr_vs_rate",
        "Attack success rate vs poison rate (not a figure of the paper)",
        "ASR against the poison rate (poisons ÷ training pairs), one line per clean-data size: lines "
        "that coincide mean the rate decides; lines apart mean the count does (paper Fig 5 left: "
        f"a count threshold, not a rate). An extra view of Fig 5 left's data. {_ASR_CHANCE}",
        LinePlot(
            "poison_rate",
            "asr",
            "poison rate",
            "attack success rate",
            series=("data.num_train",),
            explained=("poison_count",),
            log_x=True,
        ),  # fmt: skip
    )
)
register_figure(
    FigureSpec(
        "fig4",
        "Fig 4 — backdoor z-score vs number of poisons, placement at poisoning × at evaluation",
        "Left/right: poisons carry the patch in the upper-left corner (consistent) or anywhere "
        "(random); lines: the test images carry it consistently or randomly. Mean ± std over seeds. "
        f"{_Z_CHANCE} Paper (CC3M): consistent poisoning gives z ≈ 2.5 at 75 poisons (0.0025%) and "
        "improves little with more; random poisoning gives z ≈ 0 at few poisons and far more at "
        f"many; consistent wins below ~300 poisons (0.01%), random above. {_TOY_RATES}",
        LinePlot(
            "poison_count",
            "zscore",
            "poisons added (and poison rate)",
            "backdoor z-score",
            series=("eval_placement",),
            panels=("placement",),
            log_x=True,
            tick=_count_tick,
        ),  # fmt: skip
    )
)
register_figure(
    FigureSpec(
        "fig5_left",
        "Fig 5 left — backdoor z-score vs training-set size at fixed poison counts",
        f"Clean pairs in the training set (log scale), one line per poison count, consistent "
        f"placement. {_Z_CHANCE} Paper (50k-3M pairs): at 300 poisons z is nearly constant; at 75 it "
        "holds up to 1M and drops at 2-3M — a threshold count, not a steady decline with the rate.",
        LinePlot(
            "data.num_train",
            "zscore",
            "clean training pairs",
            "backdoor z-score",
            series=("poison_count",),
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
        f"{_Z_CHANCE} Paper: a 1M-parameter model is never backdoored, 5M ones vary widely "
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
register_figure(
    FigureSpec(
        "fig6",
        "Fig 6 — backdoor z-score vs patch size",
        "Checkerboard side in pixels of the 32×32 toy images, with the fraction of the image area "
        "it covers; the table gives the side of a patch covering the same fraction of the paper's "
        "224×224 images. Toy pixels are much coarser: one pixel is already 0.1% of the area (the "
        "paper's 4×4 is 0.03%, its 16×16 0.51%), so the toy's smallest patches correspond to the "
        "paper's middle range, and a 1×1 'checkerboard' is a single white pixel. "
        f"{_Z_CHANCE} Paper (0.0025% poisons): 2×2 fails, 4×4 works, 16×16 best, 32×32 maybe "
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
