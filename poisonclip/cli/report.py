"""``poisonclip report`` (figures and tables from a results database) and ``poisonclip reproduce``
(every shipped experiment, then the report and the paper-vs-toy table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonclip.cli import options

EXPERIMENTS_DIR = "experiments"  # the shipped experiment files, relative to the repository root


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "report", run_report, "figures (paper Figs 2-6) and Markdown/HTML tables from a results database"
    )
    p.add_argument("db", help="results database written by `poisonclip sweep run`")
    options.add_out_dir(p)

    p = options.command(
        sub,
        "reproduce",
        run_reproduce,
        "run every shipped experiment (resumable), then the report and the paper-vs-toy table",
    )
    p.add_argument(
        "files",
        nargs="*",
        help=f"experiment files (default: every {EXPERIMENTS_DIR}/*.toml, paper figures first)",
    )
    p.add_argument("--db", default=options.DEFAULT_DB, help="results database (SQLite), created or resumed")
    p.add_argument("--out", default="results/report", help="report directory (replaced as a whole)")
    p.add_argument(
        "--figures",
        help="also copy each figure's PNG and CSV into this directory, file by file (e.g. docs/figures)",
    )
    p.add_argument(
        "--readme",
        help="also replace the paper-vs-toy table between this Markdown file's markers "
        "(<!-- paper-vs-toy: ... --> and <!-- /paper-vs-toy -->), e.g. README.md",
    )
    options.add_local_sweep_options(p)
    options.add_no_progress(p)
    options.add_overwrite(p, out=True)


def run_report(args: argparse.Namespace) -> int:
    """Draw every figure that a sweep in the database lists, and write report.md and a
    self-contained report.html with the tables behind every figure."""
    from poisonclip.report.reproduce import write_report_dir

    summary = write_report_dir(args.db, args.out)
    print(f"wrote {len(summary.figures)} figures, {summary.markdown} and {summary.html}")
    if summary.missing:
        print(f"no sweep in {args.db} lists: {', '.join(summary.missing)}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """Run the trials of every experiment file that the database lacks (a second call trains
    nothing), then write the report (figures, tables, and the paper's findings beside the toy's
    numbers with a verdict each) and optionally copy the figures elsewhere. Hours on a 2-core CPU
    from an empty database; under a minute on a complete one."""
    from poisonclip.cli.sweep import interruptible
    from poisonclip.experiments.executors import local_executor
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import run_sweep
    from poisonclip.report.document import check_readme, publish_figures, update_readme
    from poisonclip.report.reproduce import check_figures_dir, experiment_files

    files = args.files or experiment_files(EXPERIMENTS_DIR)
    # Everything is checked before the first trial: files, devices, workers, README and --figures.
    sweeps = [load_sweep(f) for f in files]
    executors = [local_executor(sweep, args.workers) for sweep in sweeps]
    if args.readme:
        check_readme(Path(args.readme))
    if args.figures:
        check_figures_dir(args.figures)
    failed = 0
    for sweep, executor in zip(sweeps, executors, strict=True):
        with interruptible():
            summary = run_sweep(sweep, args.db, executor, args.data_root, options.progress(args))
        failed += len(summary.failed)
        print(f"sweep {sweep.name}: trained {summary.completed}, {summary.already_done} already stored "
              f"({summary.trials} trials), {len(summary.failed)} failed")  # fmt: skip
    run_report(args)
    if args.figures:
        written = publish_figures(args.out, args.figures)
        print(f"copied {len(written)} figure files (PNG, CSV) to {args.figures}")
    if args.readme:
        update_readme(args.readme, args.db)
        print(f"updated the paper-vs-toy table in {args.readme}")
    return 1 if failed else 0
