"""Running sweeps: trials into the results store, status, seeds trained together, executors."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from poisonclip.cli import main
from poisonclip.errors import UsageError
from poisonclip.experiments.backdoor_trial import SIMILARITY_EDGES
from poisonclip.experiments.runners import CellResult
from poisonclip.experiments.store import ResultStore
from poisonclip.experiments.sweep import (
    LocalExecutor,
    SubmititExecutor,
    TrialJob,
    group_trials,
    run_sweep,
    run_trials,
    sweep_status,
)
from tests.sweep_files import SMALL, TINY, expected_keys, stored, tiny_sweep, write

METRICS = ("zscore", "asr", "natural_rate", "zero_shot_acc", "poison_rate", "num_params",
           "num_params_visual", "patch_area_fraction", "train_seconds", "num_nontarget", "probe_acc",
           "probe_asr", "probe_natural_rate")  # fmt: skip


def test_run_trial_stores_every_cell_with_metrics_curves_and_versions(tmp_path):
    sweep = tiny_sweep()
    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    store.register_sweep(sweep)
    clean = next(t for t in sweep.trials() if len(t.cells) == 4)
    [outcome] = run_trials(TrialJob((clean,), db, tmp_path / "data"))
    assert outcome.error is None and outcome.seconds > 0
    rows = store.rows()
    assert {(r.config_hash, r.seed) for r in rows} == {(c.key, 0) for c in clean.cells}
    assert len({r.train_hash for r in rows}) == 1  # one trained model, evaluated four ways
    for r in rows:
        assert set(METRICS) <= set(r.metrics)
        assert r.metrics["poison_rate"] == 0 and r.metrics["num_train_pairs"] == 300
        n = r.metrics["num_nontarget"]
        assert sum(r.curves["pairs"]) == n * (n - 1) // 2 == sum(r.curves["clean_pairs"])
        assert len(r.curves["pairs"]) == len(SIMILARITY_EDGES) - 1
        assert all(s <= p for s, p in zip(r.curves["same_label"], r.curves["pairs"], strict=True))
        assert set(r.versions) == {"torch", "open_clip", "poisonclip"}
        assert r.wall_seconds > 0 and r.cell["data.num_train"] == 300 and r.cell["train.model"]
        assert r.cell["poison_count"] == 0 and r.cell["eval_placement"] in ("consistent", "random")
    # Evaluation placement changes the patched features only.
    by_eval = {r.cell["eval_placement"]: r for r in rows if r.cell["placement"] == "consistent"}
    assert by_eval["consistent"].curves["clean_pairs"] == by_eval["random"].curves["clean_pairs"]
    assert store.claims() == []
    # A second run of the same trial stores nothing twice, and never overwrites a stored row.
    assert run_trials(TrialJob((clean,), db, tmp_path / "data"))[0].skipped
    store.add_trial(clean, [CellResult({"zscore": 99.0}, {})] * 4, 1.0, {})
    assert len(stored(db)) == 4 and all(r.metrics["zscore"] != 99.0 for r in store.rows())
    with sqlite3.connect(db) as conn:
        assert json.loads(conn.execute("SELECT figures FROM sweeps").fetchone()[0]) == ["fig4"]
        assert conn.execute("SELECT COUNT(*) FROM sweep_cells").fetchone()[0] == 12


def test_status_counts_done_running_and_remaining(tmp_path):
    sweep = tiny_sweep()
    db = tmp_path / "r.sqlite"
    assert sweep_status(sweep, db).remaining == 10  # no database yet: nothing done
    store = ResultStore(db)
    first, second, third = sweep.trials()[:3]
    assert run_trials(TrialJob((first,), db, tmp_path / "data"))[0].error is None
    store.claim(second, os.getpid())  # alive: this process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.claim(third, dead.pid)  # a killed run's leftover claim
    status = sweep_status(sweep, db)
    assert (status.trials, status.done, status.running, status.remaining) == (10, 1, 1, 8)
    assert status.rows_done == len(first.cells) and status.rows_total == 24


def test_seeds_trained_together_give_the_rows_of_separate_trials(tmp_path):
    """A job of several seeds (train_many, one grouped computation) stores what one job a seed
    stores, up to float rounding; the sweep counts and resumes per trial either way."""
    sweep = tiny_sweep(SMALL.replace("[0, 5]", "[5]").replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    (trial_key,) = {t.train_key for t in sweep.trials()}
    assert [len(g) for g in group_trials(sweep.trials(), 2)] == [2, 1]
    assert all(len(g) == 1 for g in group_trials(sweep.trials(), 1))
    with pytest.raises(UsageError, match="seeds-per-job"):
        group_trials(sweep.trials(), 0)
    executor = LocalExecutor(workers=1, threads=1)
    separate, together = tmp_path / "separate.sqlite", tmp_path / "together.sqlite"
    run_sweep(sweep, separate, executor, tmp_path / "data", progress=False, seeds_per_job=1)
    summary = run_sweep(sweep, together, executor, tmp_path / "data", progress=False, seeds_per_job=3)
    assert (summary.completed, summary.failed) == (3, [])
    rows = {db: {r.seed: r.metrics for r in ResultStore(db).rows()} for db in (separate, together)}
    assert sorted(rows[together]) == [0, 1, 2]
    for seed, metrics in rows[separate].items():
        grouped = rows[together][seed]
        assert grouped["train_final_loss"] == pytest.approx(metrics["train_final_loss"], abs=1e-4)
        for key in ("zero_shot_acc", "asr"):
            assert grouped[key] == pytest.approx(metrics[key], abs=0.02)
    assert {r.train_hash for r in ResultStore(together).rows()} == {trial_key}
    assert (
        run_sweep(sweep, together, executor, tmp_path / "data", progress=False, seeds_per_job=3).already_done
        == 3
    )


def test_a_failing_seed_in_a_job_fails_alone(tmp_path, monkeypatch):
    import dataclasses

    from poisonclip.experiments import sweep as sweep_module
    from poisonclip.experiments.runners import get_runner

    runner = get_runner("backdoor")

    def prepare(trial, *args):
        job = runner.prepare(trial, *args)
        if trial.seed != 1:
            return job

        def broken(*_):
            raise RuntimeError("evaluation failed")

        return dataclasses.replace(job, finish=broken)

    monkeypatch.setattr(sweep_module, "get_runner", lambda name: dataclasses.replace(runner, prepare=prepare))
    sweep = tiny_sweep(SMALL.replace("[0, 5]", "[5]").replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    db = tmp_path / "r.sqlite"
    summary = run_sweep(sweep, db, LocalExecutor(1, 1), tmp_path / "data", progress=False, seeds_per_job=3)
    assert summary.completed == 2 and [o.label.endswith("seed1") for o in summary.failed] == [True]
    assert "evaluation failed" in summary.failed[0].error
    assert {seed for _, seed in stored(db)} == {0, 2} and ResultStore(db).claims() == []
    assert sweep_status(sweep, db).remaining == 1


def test_jobs_cover_every_configuration_first():
    sweep = tiny_sweep()  # 5 models × 2 seeds, trials seed-major
    trials = sweep.trials()
    assert group_trials(trials, 1) == [(t,) for t in trials]
    jobs = group_trials(trials, 2)
    assert len(jobs) == 5 and all({t.seed for t in job} == {0, 1} for job in jobs)
    assert len({job[0].train_key for job in jobs}) == 5


def test_bad_seeds_per_job_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, TINY)
    db = tmp_path / "out" / "r.sqlite"
    assert main(["sweep", "run", str(path), "--db", str(db), "--seeds-per-job", "0"]) == 2
    assert "--seeds-per-job must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_local_executor_defaults_fit_the_cores():
    assert LocalExecutor.for_machine(cores=2) == LocalExecutor(workers=2, threads=1)
    assert LocalExecutor.for_machine(1, cores=2) == LocalExecutor(workers=1, threads=2)
    assert LocalExecutor.for_machine(2, cores=8) == LocalExecutor(workers=2, threads=4)
    with pytest.raises(UsageError, match="--workers"):
        LocalExecutor.for_machine(3, cores=2)


@pytest.mark.parametrize(("cluster", "seeds"), [("debug", "[0, 1]"), ("local", "[0]")])
def test_submitit_executor_runs_the_sweep(tmp_path, cluster, seeds):
    """submitit's in-process (debug) and subprocess (local) executors stand in for SLURM."""
    sweep = tiny_sweep(SMALL.replace("seeds = [0, 1]", f"seeds = {seeds}").replace("[0, 5]", "[5]"))
    db = tmp_path / "r.sqlite"
    executor = SubmititExecutor(tmp_path / "submitit", cluster, poll_seconds=0.2)
    summary = run_sweep(sweep, db, executor, progress=False)
    assert (summary.completed, summary.failed) == (len(sweep.seeds), [])
    assert set(stored(db)) == expected_keys(sweep)
    assert run_sweep(sweep, db, executor, progress=False).already_done == len(sweep.seeds)


def test_submitit_parameters_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(UsageError, match=r"\[slurm\] parameters"):
        SubmititExecutor(tmp_path / "s", "local", (("no_such_parameter", 1),))
    if shutil.which("srun") is None:  # not a SLURM cluster: a clear error, nothing written
        path = write(tmp_path, TINY)
        assert (
            main(["sweep", "run", str(path), "--db", str(tmp_path / "o" / "r.sqlite"), "--executor", "slurm"])
            == 2
        )
        assert "are you indeed on a slurm cluster" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()
