"""Where a sweep's trials run: processes on this machine, or SLURM jobs (submitit), each checked
before the first trial."""

from __future__ import annotations

from pathlib import Path

from poisonclip.errors import UsageError
from poisonclip.experiments.grid import Sweep
from poisonclip.experiments.sweep import LocalExecutor, SubmititExecutor
from poisonclip.train.loop import check_device


def local_executor(sweep: Sweep, workers: int | None = None) -> LocalExecutor:
    """``workers`` processes here (default: one single-thread worker a core). Every device the
    sweep's cells train on must exist here: a missing one fails now, not in each trial."""
    for cell in sweep.cells:
        check_device(cell.train.device)
    return LocalExecutor.for_machine(workers)


def slurm_executor(sweep: Sweep, db: str | Path, workers: int | None = None) -> SubmititExecutor:
    """One SLURM job per trial with the sweep file's ``[slurm]`` resources; submitit's files go
    beside the database. ``workers`` is a local setting and refused."""
    if workers is not None:
        raise UsageError("--workers is for the local executor; set SLURM resources in the file's [slurm]")
    return SubmititExecutor(Path(db).parent / "submitit", "slurm", sweep.slurm)
