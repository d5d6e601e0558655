"""``LinePlot``: a metric against one grid axis, mean ± std over seeds, and what the paper's line
figures share (the captions' chance and toy-rate sentences, the poison-count tick, one line per
downstream classifier)."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poisonclip.report.figure_registry import Table
from poisonclip.report.formatting import (
    column_title,
    describe,
    format_value,
    mean_pm_std,
    mean_std,
    sort_key,
    varying_keys,
)
from poisonclip.report.plotting import place_legend, pyplot, save_figure, subplots

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow


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
        plt = pyplot()
        series_keys, groups = self.groups(rows)
        panel_values = sorted({panel for panel, _ in groups}, key=sort_key)
        fig, axes = subplots(len(panel_values), 5.2, 4)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        line_values = sorted({line for _, line in groups}, key=sort_key)
        table_rows = []
        for ax, panel in zip(axes, panel_values, strict=True):
            drawn = [line for line in line_values if (panel, line) in groups]
            for line in drawn:
                colour = colours[line_values.index(line) % len(colours)]
                label = (
                    ", ".join(describe(k, v) for k, v in zip(series_keys, line, strict=True)) or "mean ± std"
                )
                by_x = groups[(panel, line)]
                self.draw_line(ax, by_x, colour, label, first=line == drawn[0])
                for x in sorted(by_x):
                    table_rows.append(self._table_row(panel, line, x, by_x[x]))
            self.decorate(ax, panel, rows)
        axes[0].set_ylabel(self.y_label)
        save_figure(fig, path)
        columns = (
            *(column_title(k) for k in self.panels),
            *(column_title(k) for k in series_keys),
            column_title(self.x),
            *(name for name, _ in self.columns),
            "models",
            *(("poison rate",) if self.x != "poison_rate" else ()),
            "z-score",
            "ASR",
            "natural rate",
            "zero-shot top-1",
        )
        return Table(columns, tuple(table_rows))

    def draw_line(self, ax, by_x: dict[float, list], colour: str, label: str, first: bool) -> None:
        """One series; its reference lines are named in the legend once (``first``), in its colour."""
        baseline = [r for x, rs in by_x.items() if self.log_x and x <= 0 for r in rs]
        xs = sorted(x for x in by_x if not (self.log_x and x <= 0))
        stats = [mean_std([r.get(self.y) for r in by_x[x]]) for x in xs]
        means = [m for m, _ in stats]
        ax.plot(xs, means, "o-", color=colour, label=label)
        ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats], color=colour, alpha=0.2)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), [r.get(self.y) for r in by_x[x]], s=8, color=colour, alpha=0.5)
        if baseline:
            mean, std = mean_std([r.get(self.y) for r in baseline])
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)
            ax.axhline(mean, color=colour, ls="--", lw=1, label="0 poisons (clean model)" if first else None)
        if self.y.endswith("asr"):  # ASR's chance level: the same images unpatched, called the target
            natural_rate = self.y.removesuffix("asr") + "natural_rate"  # probe_asr: probe_natural_rate
            natural = [statistics.fmean(r.get(natural_rate) for r in by_x[x]) for x in xs]
            ax.plot(xs, natural, ":", color=colour, label="natural rate (unpatched)" if first else None)

    def decorate(self, ax, panel: tuple, rows: Sequence[ResultRow]) -> None:
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
        ax.set_title(", ".join(describe(k, v) for k, v in zip(self.panels, panel, strict=True)), fontsize=10)
        ax.grid(alpha=0.3)
        place_legend(ax)

    def _table_row(self, panel: tuple, line: tuple, x: float, rows: list) -> tuple[str, ...]:
        return (
            *(str(v) for v in panel),
            *(str(v) for v in line),
            format_value(self.x, x),
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


def count_tick(x: float, rows: Sequence[ResultRow]) -> str:
    return f"{x:,}\n{statistics.fmean(r.get('poison_rate') for r in rows):.2%}"


Z_CHANCE = (
    "The dotted grey line is chance (z = 0: patched test images no more alike than clean ones); a "
    "dashed line with a band, where present, is the clean model trained without poisons."
)
ASR_CHANCE = (
    "Dotted lines: the natural rate — the same test images *unpatched* classified as the target — "
    "the level a clean model's ASR sits at."
)
TOY_RATES = (
    "The toy needs far higher poison rates than CC3M (a tiny model on ~10k pairs vs a 30M-parameter "
    "model on 3M): compare the shapes of the curves, not the rates."
)


def plot_classifiers(
    rows: Sequence[ResultRow],
    path: Path,
    plot: LinePlot,
    classifiers: Sequence[tuple[str, str]],
    references: Callable[[Any], None] | None = None,
) -> tuple[list[str], dict[tuple, dict[float, list]], list[tuple]]:
    """A rate in [0, 1] against ``plot.x`` on one axes, written to ``path``: one line per downstream
    classifier (``classifiers``: (metric, legend text), each drawn as ``plot`` with that metric as
    its y) and per other setting that varies; ``references(ax)`` adds reference lines. Returns
    (series keys, groups, lines) for the figure's table."""
    plt = pyplot()
    plots = [dataclasses.replace(plot, y=metric) for metric, _ in classifiers]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series_keys, groups = plot.groups(rows)  # no panels: groups are keyed ((), series values)
    lines = sorted((line for _, line in groups), key=sort_key)
    for i, line in enumerate(lines):
        setting = ", ".join(describe(k, v) for k, v in zip(series_keys, line, strict=True))
        for j, (each, (_, name)) in enumerate(zip(plots, classifiers, strict=True)):
            colour = colours[(i * len(plots) + j) % len(colours)]
            each.draw_line(
                ax, groups[(), line], colour, f"{name}, {setting}" if setting else name, i == j == 0
            )
    if references is not None:
        references(ax)
    ax.set_ylim(-0.03, 1.03)
    plots[0].decorate(ax, (), rows)
    ax.set_ylabel(plot.y_label)
    save_figure(fig, path)
    return series_keys, groups, lines
