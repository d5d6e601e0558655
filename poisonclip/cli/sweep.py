"""``poisonclip sweep run|status``: experiment grids into a results database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from poisonclip.cli import options

EXECUTORS = ("local", "slurm")


def add_parser(sub: argparse._SubParsersAction) -> None:
    sweep_sub = options.group(
        sub, "sweep", "run experiment grids into a results database", "sweep_command", "ACTION"
    )
    q = options.command(
        sweep_sub,
        "run",
        run_trials,
        "run every (configuration, seed) trial of an experiment file not yet stored",
    )
    q.add_argument("file", help="experiment file (TOML), e.g. experiments/fig4.toml")
    q.add_argument("--db", default=options.DEFAULT_DB, help="results database (SQLite)")
    q.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local processes, or SLURM jobs via submitit (settings: the file's [slurm])",
    )
    options.add_local_sweep_options(q)
    q.add_argument(
        "--seeds-per-job",
        type=int,
        help="train this many seeds of one configuration together, as one computation (train_many: "
        "stacked weights; meant for GPUs, where one toy model leaves the card idle; not timed "
        "here). Default: all seeds when this host would train on a GPU, else 1 (on a CPU one "
        "single-thread worker a seed is as fast); with --executor slurm, decided on the submitting "
        "host, so set it there. Only for attacks whose trials train one model (not defense)",
    )
    options.add_no_progress(q, help="no progress bar")
    q = options.command(
        sweep_sub, "status", run_status, "done / running / remaining trials of an experiment file"
    )
    q.add_argument("file", help="experiment file (TOML)")
    q.add_argument("--db", default=options.DEFAULT_DB, help="results database (SQLite)")


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C during a sweep: one line instead of a traceback, exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("poisonclip: interrupted; finished trials are stored, rerun to complete", file=sys.stderr)
        raise SystemExit(130) from None


def run_trials(args: argparse.Namespace) -> int:
    """Validate the experiment file, then train and evaluate every missing trial and store each one
    atomically; rerun after an interruption to complete only the missing ones."""
    from poisonclip.experiments.executors import local_executor, slurm_executor
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import run_sweep

    sweep = load_sweep(args.file)
    if args.executor == "slurm":
        executor = slurm_executor(sweep, args.db, args.workers)
    else:
        executor = local_executor(sweep, args.workers)
    with interruptible():
        summary = run_sweep(
            sweep, args.db, executor, args.data_root, options.progress(args), args.seeds_per_job
        )
    print(
        f"sweep {sweep.name}: ran {summary.completed} trials, {summary.already_done} were already "
        f"stored, {summary.skipped} were run by another process, {len(summary.failed)} failed "
        f"({summary.trials} in all); results in {args.db}"
    )
    return 1 if summary.failed else 0


def run_status(args: argparse.Namespace) -> int:
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import sweep_status

    sweep = load_sweep(args.file)
    status = sweep_status(sweep, args.db)
    print(
        f"sweep {status.name} ({sweep.description or 'no description'}) in {args.db}:\n"
        f"{status.trials} trials, {status.rows_done}/{status.rows_total} result rows stored\n"
        f"done {status.done} ({status.done / status.trials:.0%})  running {status.running}  "
        f"remaining {status.remaining}"
    )
    return 0
