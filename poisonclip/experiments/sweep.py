"""Run a sweep: every (model, seed) trial not yet in the results store, on an executor.

Executors:

* ``LocalExecutor`` — worker processes on this machine. Default: one single-thread worker per core
  (on 2 cores, two single-thread processes trained 1.31× faster than one two-thread process;
  DESIGN.md); workers × threads never exceeds the cores.
* ``SubmititExecutor`` — one job per trial through ``submitit`` (a SLURM job array, or submitit's
  ``local``/``debug`` executors). The database and data cache must be on a file system the jobs
  can reach.

A job is one trial, or several seeds of one model configuration (``seeds_per_job``): their models
train as one computation (``train_many``: stacked weights on a GPU, where one toy model leaves the
card idle; on a CPU a job a seed is as fast). ``run_trials`` runs a job in its worker and writes
each trial's rows in one transaction; a sweep killed at any moment and run again completes exactly
the missing trials. Local workers die with
the sweep process (even by SIGKILL), so nothing keeps training behind a killed sweep.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import open_clip
import torch

from poisonclip._version import __version__
from poisonclip.data.cache import load_sweep_data, prepare_sweep_data
from poisonclip.errors import UsageError
from poisonclip.experiments.grid import Sweep, Trial
from poisonclip.experiments.runners import get_runner
from poisonclip.experiments.store import ResultStore, trial_done
from poisonclip.progress import progress_bar
from poisonclip.train.loop import resolve_device
from poisonclip.train.many import train_many
from poisonclip.train.parallel import available_cores

# Shown in the progress bar after each trial, where the attack reports them: (metric, short name).
SUMMARY_METRICS = (("zscore", "z"), ("asr", "asr"), ("zero_shot_success_rate", "zero-shot"),
                   ("probe_success_rate", "probe"))  # fmt: skip


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs for its trials (picklable: it crosses process boundaries)."""

    trials: tuple[Trial, ...]  # one, or seeds of one model configuration (trained together)
    db: Path
    data_root: Path
    threads: int | None = None  # torch intra-op threads in the worker; None = torch's default


@dataclass(frozen=True)
class TrialOutcome:
    label: str
    seconds: float
    summary: str = ""  # headline metrics, for the progress bar
    error: str | None = None  # the traceback if the trial failed
    skipped: bool = False  # stored meanwhile or being run by another process: not run here


def package_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "poisonclip": __version__,
    }


def run_trials(job: TrialJob) -> list[TrialOutcome]:
    """Train and evaluate the job's trials and store each one's rows as soon as they are ready (in
    the worker process). A trial already stored or claimed by another live process (a concurrent
    ``sweep run`` on the same database) is skipped; a trial that fails is released for the next
    run; the others still count."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    store = ResultStore(job.db)
    pending = [t for t in job.trials if store.claim(t, os.getpid())]  # atomic: one process a trial
    outcomes = [
        TrialOutcome(t.label, 0.0, "stored or running elsewhere", skipped=True)
        for t in job.trials
        if t not in pending
    ]
    if not pending:
        return outcomes
    start = time.perf_counter()

    def failed(trials: Sequence[Trial]) -> list[TrialOutcome]:
        for trial in trials:
            store.release(trial)  # the next run redoes it
        error = traceback.format_exc()
        return [TrialOutcome(t.label, time.perf_counter() - start, error=error) for t in trials]

    try:
        train, test, classnames = load_sweep_data(job.data_root, pending[0].cells[0].data)
        runner = get_runner(pending[0].attack)
        if len(pending) > 1 and runner.prepare is not None:  # one computation for all seeds
            prepared = [runner.prepare(trial, train, test, classnames) for trial in pending]
            trained = train_many([p.dataset for p in prepared], [p.config for p in prepared], workers=1)
            finishers = [partial(p.finish, *model) for p, model in zip(prepared, trained, strict=True)]
            shared = (time.perf_counter() - start) / len(pending)  # training time, shared
        else:
            finishers = [partial(runner.run, trial, train, test, classnames) for trial in pending]
            shared = 0.0
    except Exception:
        return outcomes + failed(pending)
    for trial, finish in zip(pending, finishers, strict=True):
        trial_start = time.perf_counter()
        try:
            rows = finish()
            seconds = shared + time.perf_counter() - trial_start
            store.add_trial(trial, rows, seconds, package_versions())
        except Exception:
            outcomes += failed([trial])
            continue
        headline = rows[0].metrics
        summary = " ".join(
            f"{short}={headline[key]:.2f}" for key, short in SUMMARY_METRICS if key in headline
        )
        outcomes.append(TrialOutcome(trial.label, seconds, summary))
    return outcomes


def group_trials(trials: Sequence[Trial], seeds_per_job: int) -> list[tuple[Trial, ...]]:
    """``trials`` as jobs of up to ``seeds_per_job`` trials of one model configuration
    (``train_key``). Jobs keep the trials' order, seed-major (1 = a job a trial, in order): the
    first jobs cover every configuration, so a partial sweep already covers every grid point."""
    check_seeds_per_job(seeds_per_job)
    by_model: dict[str, list[Trial]] = {}
    for trial in trials:
        by_model.setdefault(trial.train_key, []).append(trial)
    chunks = [
        [tuple(group[i : i + seeds_per_job]) for i in range(0, len(group), seeds_per_job)]
        for group in by_model.values()
    ]
    return [model[k] for k in range(max(map(len, chunks), default=0)) for model in chunks if k < len(model)]


def check_seeds_per_job(seeds_per_job: int) -> None:
    if seeds_per_job < 1:
        raise UsageError(f"--seeds-per-job must be at least 1, got {seeds_per_job}")


def default_seeds_per_job(sweep: Sweep) -> int:
    """All seeds of a configuration in one job where this host would train on a GPU and the
    attack's trials train one model each (``OneModel`` runners), else one."""
    if get_runner(sweep.attack).prepare is None:
        return 1
    on_gpu = any(resolve_device(cell.train.device).type == "cuda" for cell in sweep.cells)
    return len(sweep.seeds) if on_gpu else 1


class Executor(Protocol):
    def run(self, jobs: Sequence[TrialJob]) -> Iterator[list[TrialOutcome]]:
        """Run ``jobs``, yielding each job's outcomes as it finishes (in any order)."""
        ...


@dataclass(frozen=True)
class LocalExecutor:
    """``workers`` processes with ``threads`` torch threads each (one worker: this process)."""

    workers: int
    threads: int

    @staticmethod
    def for_machine(workers: int | None = None, cores: int | None = None) -> LocalExecutor:
        """Single-thread workers, one per core by default; given fewer workers, they share the cores."""
        cores = cores or available_cores()
        workers = cores if workers is None else workers
        if not 1 <= workers <= cores:
            raise UsageError(f"--workers must be between 1 and the {cores} cores available, got {workers}")
        return LocalExecutor(workers, cores // workers)

    def run(self, jobs: Sequence[TrialJob]) -> Iterator[list[TrialOutcome]]:
        if not jobs:
            return
        workers = min(self.workers, len(jobs))  # fewer jobs than workers: more threads each
        threads = self.workers * self.threads // workers
        jobs = [dataclasses.replace(job, threads=threads) for job in jobs]
        if workers == 1:  # in this process: saves starting another (and importing torch there)
            previous = torch.get_num_threads()
            try:
                yield from map(run_trials, jobs)
            finally:
                torch.set_num_threads(previous)
            return
        # spawn, not fork: forking a process that already runs torch threads can deadlock.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),))
        try:
            yield from pool.imap_unordered(run_trials, jobs, chunksize=1)
        except BaseException:  # Ctrl-C, an exception, or the caller stopped: end the workers at once
            pool.terminate()
            raise
        else:  # workers exit by themselves, so they clean up (a killed one leaks its semaphores,
            pool.close()  # and the resource tracker warns about them at shutdown)
        finally:
            pool.join()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(parent_pid: int) -> None:
    """Make a pool worker die with the sweep process: a SIGKILLed (or SIGTERMed) parent cannot end
    its pool, and an orphan would keep training. Its uncommitted trial is redone by the next run.
    (Runs once the worker has imported poisonclip: a worker still starting up when the parent
    dies exits here, before taking a trial.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the pool
    if sys.platform == "linux":  # the kernel kills the worker the moment the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    else:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    os._exit(1)


@dataclass(frozen=True)
class SubmititExecutor:
    """One submitit job per trial, as an array. ``cluster``: ``slurm``, or ``local``/``debug``
    (submitit's own executors: processes on this machine / in this process) for dry runs."""

    folder: Path
    cluster: str = "slurm"
    parameters: tuple[tuple[str, Any], ...] = ()  # submitit's update_parameters(**dict(...))
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        self._executor()  # bad parameters fail now, before any work

    def _executor(self):
        import submitit  # optional heavy import: only this executor needs it

        try:
            executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        except RuntimeError as err:  # e.g. no srun: not on a SLURM cluster
            raise UsageError(f"--executor {self.cluster}: {err}") from err
        try:
            executor.update_parameters(**dict(self.parameters))
        except (ValueError, TypeError, NameError) as err:
            raise UsageError(f"[slurm] parameters: {str(err).splitlines()[0]}") from err
        return executor

    def run(self, jobs: Sequence[TrialJob]) -> Iterator[list[TrialOutcome]]:
        if not jobs:
            return
        import submitit

        threads = dict(self.parameters).get("cpus_per_task")
        jobs = [dataclasses.replace(job, threads=threads) for job in jobs]
        submitted = self._executor().map_array(run_trials, jobs)
        trials = {job.job_id: trial_job.trials for job, trial_job in zip(submitted, jobs, strict=True)}
        for job in submitit.helpers.as_completed(submitted, poll_frequency=self.poll_seconds):
            try:
                yield job.result()
            except Exception as err:  # the job itself died: time limit, node failure, memory
                store = ResultStore(jobs[0].db)
                for trial in trials[job.job_id]:
                    store.release(trial)  # its claim (another host's) would block reruns for CLAIM_TTL
                yield [
                    TrialOutcome(t.label, 0.0, error=f"submitit job {job.job_id}: {err}")
                    for t in trials[job.job_id]
                ]


@dataclass(frozen=True)
class SweepSummary:
    trials: int
    already_done: int
    completed: int
    failed: list[TrialOutcome]
    skipped: int = 0  # stored meanwhile or run by a concurrent process


def run_sweep(
    sweep: Sweep,
    db: str | Path,
    executor: Executor,
    data_root: str | Path | None = None,
    progress: bool = True,
    seeds_per_job: int | None = None,
) -> SweepSummary:
    """Run every trial of ``sweep`` whose rows are not all in ``db``. ``data_root`` caches the
    synthetic datasets (default: ``data/`` beside the database); ``seeds_per_job`` trains that many
    seeds of a configuration together (default: ``default_seeds_per_job``)."""
    if seeds_per_job is None:
        seeds_per_job = default_seeds_per_job(sweep)
    check_seeds_per_job(seeds_per_job)  # before anything is written
    if seeds_per_job > 1 and get_runner(sweep.attack).prepare is None:
        raise UsageError(
            f"--seeds-per-job: the {sweep.attack} runner trains several models a trial, one seed a job"
        )
    db = Path(db)
    data_root = Path(data_root) if data_root is not None else db.parent / "data"
    store = ResultStore(db)
    store.register_sweep(sweep)
    trials = sweep.trials()
    done = store.done_keys()
    pending = [t for t in trials if not trial_done(t, done)]
    for config in {t.cells[0].data: None for t in pending}:  # once, here: workers then only read
        prepare_sweep_data(data_root, config)

    jobs = [TrialJob(group, db, data_root) for group in group_trials(pending, seeds_per_job)]
    bar = progress_bar(total=len(trials), initial=len(trials) - len(pending), desc=sweep.name, unit="trial",
               disable=not progress)  # fmt: skip
    failed, completed, skipped = [], 0, 0
    with bar:
        for outcomes in executor.run(jobs):
            for outcome in outcomes:
                bar.update()
                if outcome.error:
                    failed.append(outcome)
                    bar.write(f"trial {outcome.label} failed:\n{outcome.error}")
                elif outcome.skipped:
                    skipped += 1
                else:
                    completed += 1
                    bar.set_postfix_str(f"{outcome.summary} ({outcome.seconds:.0f} s)")
    return SweepSummary(len(trials), len(trials) - len(pending), completed, failed, skipped)


@dataclass(frozen=True)
class SweepStatus:
    name: str
    trials: int
    done: int
    running: int
    remaining: int  # not done and not running (includes trials of killed runs)
    rows_done: int
    rows_total: int


def sweep_status(sweep: Sweep, db: str | Path) -> SweepStatus:
    """Done / running / remaining trials of ``sweep`` in ``db`` (which need not exist yet: none
    done). Only reads ``db``: a directory, an empty or foreign file is refused, never changed."""
    trials = sweep.trials()
    done, live = set(), set()
    if Path(db).exists():
        store = ResultStore(db, read_only=True)
        done = store.done_keys()
        live = {(c.train_hash, c.seed) for c in store.claims() if c.alive()}
    finished = sum(trial_done(t, done) for t in trials)
    running = sum(not trial_done(t, done) and (t.train_key, t.seed) in live for t in trials)
    rows = [(cell.key, t.seed) for t in trials for cell in t.cells]
    return SweepStatus(
        name=sweep.name,
        trials=len(trials),
        done=finished,
        running=running,
        remaining=len(trials) - finished - running,
        rows_done=sum(key in done for key in rows),
        rows_total=len(rows),
    )
