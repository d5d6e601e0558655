"""``poisonclip report``: figures and the tables behind them, from a results database only.

Writes, under ``out_dir``: one PNG per figure that some sweep in the database lists and its
table as a CSV, ``report.md`` (linking the PNGs) and ``report.html`` (self-contained: the PNGs
embedded as base64), each with every figure's caption and table, a summary table per sweep, and
the package versions that produced the rows.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from poisonclip.data.io import atomic_path, write_text_atomic
from poisonclip.experiments.store import ResultRow, ResultStore
from poisonclip.report.findings import paper_vs_toy
from poisonclip.report.sweep_figures import (
    Table,
    get_figure,
    list_figures,
    mean_pm_std,
    sort_key,
    varying_keys,
)

# Metrics summarised per cell where every row has them (other attacks report other metrics).
HEADLINE_METRICS = (("zscore", "z-score", 2), ("asr", "ASR", 3), ("natural_rate", "natural rate", 3),
                    ("zero_shot_success_rate", "targeted zero-shot success", 3),
                    ("probe_success_rate", "targeted probe success", 3),
                    ("zero_shot_acc", "zero-shot top-1", 3))  # fmt: skip


FINDINGS_TEXT = (
    "Each finding the paper states, its number, and the toy's number computed from this database "
    "with a verdict by the rule in the last column (the toy needs far higher poison rates than "
    "CC3M, so the rules compare thresholds, orderings and trends, not rates). 'Not run yet': no "
    "sweep in the database feeds the figure."
)


@dataclass(frozen=True)
class Section:
    title: str
    text: str
    table: Table | None = None
    image: Path | None = None


@dataclass(frozen=True)
class ReportSummary:
    markdown: Path
    html: Path
    figures: list[Path]
    missing: list[str]  # registered figures that no sweep in the database lists


def write_report(db: str | Path, out_dir: str | Path) -> ReportSummary:
    store = ResultStore(db, create=False)
    out_dir = Path(out_dir)
    sweeps = store.sweeps()
    rows_for = figure_rows(store)
    findings = paper_vs_toy(rows_for)
    write_text_atomic(out_dir / "paper_vs_toy.csv", to_csv(findings))
    sections = [Section("The paper vs the toy", FINDINGS_TEXT, findings)]
    figures, missing = [], []
    for name in list_figures():
        spec = get_figure(name)
        feeding = [sweep for sweep, info in sweeps.items() if name in info["figures"]]
        rows = rows_for(name)
        if not rows:
            missing.append(name)
            continue
        path = out_dir / f"{name}.png"
        table = spec.render(rows, path)
        write_text_atomic(path.with_suffix(".csv"), to_csv(table))  # the numbers, for other tools
        figures.append(path)
        text = f"{spec.caption}\n\nFrom sweep(s) {', '.join(feeding)}: {len(rows)} results."
        sections.append(Section(spec.title, text, table, path))
    for sweep, info in sweeps.items():
        rows = store.rows([sweep])
        text = f"Every cell (mean ± std over seeds; {len(rows)} results). {info['description']}"
        sections.append(Section(f"Sweep {sweep}: all results", text, summary_table(rows)))
    sections.append(Section("Provenance", provenance(store.rows(), db)))
    if missing:
        sections.append(
            Section("Figures without data", f"No sweep in this database lists: {', '.join(missing)}.")
        )

    markdown, page = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(markdown, to_markdown(sections))
    write_text_atomic(page, to_html(sections))
    return ReportSummary(markdown, page, figures, missing)


def figure_rows(store: ResultStore) -> Callable[[str], list[ResultRow]]:
    """figure name → the stored rows of every sweep that lists it (none: an empty list)."""
    sweeps = store.sweeps()

    def rows_for(figure: str) -> list[ResultRow]:
        feeding = [sweep for sweep, info in sweeps.items() if figure in info["figures"]]
        return store.rows(feeding) if feeding else []

    return rows_for


def publish_figures(report_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy a report's figures (PNG + CSV, ``paper_vs_toy.csv`` included) into ``dest`` file by file,
    each replaced atomically; files of figures without data in this report are left as they are."""
    written = []
    for source in sorted(p for p in Path(report_dir).iterdir() if p.suffix in (".png", ".csv")):
        with atomic_path(Path(dest) / source.name, overwrite=True) as tmp:
            shutil.copyfile(source, tmp)
        written.append(Path(dest) / source.name)
    return written


def summary_table(rows: Sequence[ResultRow]) -> Table:
    """One line per cell: the cell keys that vary, the number of seeds, headline metrics."""
    keys = varying_keys(rows, exclude=("attack",))
    metrics = [m for m in HEADLINE_METRICS if all(m[0] in r.metrics for r in rows)]
    cells: dict[str, list[ResultRow]] = {}
    for r in rows:
        cells.setdefault(r.config_hash, []).append(r)
    lines = sorted(cells.values(), key=lambda rs: sort_key(tuple(rs[0].cell.get(k) for k in keys)))
    table_rows = tuple(
        (
            *(str(rs[0].cell.get(k)) for k in keys),
            str(len(rs)),
            *(mean_pm_std([r.metrics[key] for r in rs], digits) for key, _, digits in metrics),
            f"{statistics.fmean(r.wall_seconds for r in rs):.0f}",
        )
        for rs in lines
    )
    return Table((*keys, "seeds", *(title for _, title, _ in metrics), "s / trial"), table_rows)


def provenance(rows: Sequence[ResultRow], db: str | Path) -> str:
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted(r.versions.items())) for r in rows})
    hosts = sorted({r.host for r in rows})
    hours = sum(r.wall_seconds for r in {(r.train_hash, r.seed): r for r in rows}.values()) / 3600
    return (
        f"Database `{db}`: {len(rows)} results from {hours:.1f} h of trials on {', '.join(hosts)}. "
        f"Package versions: {'; '.join(versions)}."
    )


def to_csv(table: Table) -> str:
    """A figure's table as CSV (the formatted cells, as in the report)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return out.getvalue()


def to_markdown(sections: Sequence[Section]) -> str:
    out = ["# poisonclip sweep report", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.image is not None:
            out += [f"![{s.title}]({s.image.name})", ""]
        out += [s.text, ""]
        if s.table is not None:
            out += [table_markdown(s.table), ""]
    return "\n".join(out)


def table_markdown(table: Table) -> str:
    """A table as Markdown (as the report and the README show it)."""
    return "\n".join(
        [
            "| " + " | ".join(table.columns) + " |",
            "|" + "---|" * len(table.columns),
            *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table.rows),
        ]
    )


def to_html(sections: Sequence[Section]) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
    )
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>poisonclip report</title>"
           f"<style>{style}</style></head><body><h1>poisonclip sweep report</h1>"]  # fmt: skip
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.image is not None:
            data = base64.b64encode(s.image.read_bytes()).decode()
            out.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        out += [f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n")]
        if s.table is not None:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in s.table.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in s.table.rows
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
    out.append("</body></html>")
    return "\n".join(out)
