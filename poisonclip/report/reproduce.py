"""The steps of reproducing the paper from the shipped experiment files: which files, the report
written as one output, and where its figures may be copied."""

from __future__ import annotations

from pathlib import Path

from poisonclip.data.io import atomic_path, check_creatable
from poisonclip.errors import UsageError
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import ReportSummary, write_report


def experiment_files(directory: str | Path) -> list[Path]:
    """Every ``*.toml`` in ``directory``: the paper's figures (``fig*``) first, then the rest
    (defense matrices), each group by name."""
    files = sorted(Path(directory).glob("*.toml"), key=lambda f: (f.stem[:3] != "fig", f.stem))
    if not files:
        raise UsageError(f"no experiment files in {directory}/: name them, or run from the repository root")
    return files


def write_report_dir(db: str | Path, out: str | Path) -> ReportSummary:
    """``write_report`` into ``out`` as one output: never half-written or mixed with an older one.
    A bad database is refused before anything is written. The summary's paths are inside ``out``."""
    ResultStore(db, read_only=True)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        summary = write_report(db, tmp)
    out = Path(out)
    return ReportSummary(
        out / summary.markdown.name,
        out / summary.html.name,
        [out / figure.name for figure in summary.figures],
        summary.missing,
    )


def check_figures_dir(path: str | Path) -> None:
    """A directory that figure files can be copied into (existing, or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--figures {path}: exists and is not a directory")
    check_creatable(path / "figure.png")  # an existing directory must itself be writable
