import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.errors import UsageError
from poisonclip.experiments.backdoor_trial import SIMILARITY_EDGES
from poisonclip.experiments.grid import load_sweep, parse_sweep
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

from .sweep_files import TINY_SETTING, assert_refused

# A tiny grid: 3 poison counts × 2 poison placements × 2 test placements = 12 cells; the clean
# model (0 poisons) is shared by its 4 cells and each poisoned model by 2: 5 models a seed.
TINY = f"""
figures = ["fig4"]
seeds = [0, 1]
{TINY_SETTING}[backdoor]
poison_count = [0, 5, 20]
placement = ["consistent", "random"]
eval_placement = ["consistent", "random"]
"""


METRICS = ("zscore", "asr", "natural_rate", "zero_shot_acc", "poison_rate", "num_params",
           "num_params_visual", "patch_area_fraction", "train_seconds", "num_nontarget", "probe_acc",
           "probe_asr", "probe_natural_rate")  # fmt: skip


def tiny_sweep(text: str = TINY, name: str = "tiny"):
    return parse_sweep(tomllib.loads(text), name)


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def stored(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT config_hash, seed FROM results").fetchall()


def expected_keys(sweep) -> set[tuple[str, int]]:
    return {(cell.key, seed) for cell in sweep.cells for seed in sweep.seeds}


def test_grid_expands_to_cells_and_shares_models_between_evaluation_settings():
    sweep = tiny_sweep()
    assert len(sweep.cells) == 12 and sweep.seeds == (0, 1)
    assert len({c.key for c in sweep.cells}) == 12
    trials = sweep.trials()
    assert len(trials) == 10  # (1 clean + 2 counts × 2 placements) × 2 seeds
    assert [t.seed for t in trials] == [0] * 5 + [1] * 5  # seed-major
    assert sorted(len(t.cells) for t in trials[:5]) == [2, 2, 2, 2, 4]
    for trial in trials:
        assert len({c.train_key for c in trial.cells}) == 1
        assert len({c.params.eval_placement for c in trial.cells}) == 2
    clean = next(t for t in trials if t.cells[0].params.poison_count == 0)
    assert {c.params.placement for c in clean.cells} == {"consistent", "random"}
    cell = sweep.cells[0]
    assert cell.train.model == "toy-vit-micro" and cell.data.num_train == 300


def test_config_hash_is_stable_and_covers_training_settings():
    base = tiny_sweep()
    assert [c.key for c in tiny_sweep().cells] == [c.key for c in base.cells]
    same = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 0.002'))
    assert [c.key for c in same.cells] == [c.key for c in base.cells]  # the preset's own value
    other = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 1'))
    assert not {c.key for c in other.cells} & {c.key for c in base.cells}
    floats = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 1.0'))
    assert [c.key for c in floats.cells] == [c.key for c in other.cells]  # 1 and 1.0: one config


def test_seed_count_and_scalar_values():
    sweep = tiny_sweep(
        'seeds = 3\n[data]\nnum_train = 300\n[train]\npreset = "tiny"\n[backdoor]\npoison_count = 7'
    )
    assert sweep.seeds == (0, 1, 2) and len(sweep.cells) == 1
    assert sweep.cells[0].params.poison_count == 7 and sweep.name == "tiny"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds = [0, 1]", "seedz = [0, 1]"), "unknown keys ['seedz']"),
        (("poison_count =", "poison_cnt ="), "[backdoor] unknown keys ['poison_cnt']"),
        (('preset = "tiny"', 'preset = "tiny"\nepoch = 3'), "[train] unknown keys ['epoch']"),
        (('preset = "tiny"', 'preset = "tiny"\nseed = 3'), "seeds"),
        (('preset = "tiny"', 'preset = "nope"'), "unknown preset"),
        (('preset = "tiny"', 'preset = "tiny"\nmodel = "no-such-model"'), "unknown model config"),
        (('preset = "tiny"', 'preset = "tiny"\nmodel = "RN50"'), "takes 224px images"),
        (('preset = "tiny"', 'preset = "tiny"\nepochs = 0'), "epochs must be >= 1"),
        (('preset = "tiny"', 'preset = "tiny"\nepochs = "8"'), "is not of type"),
        (('preset = "tiny"', 'preset = "tiny"\nbatch_size = 512'), "exceeds num_train"),
        (("[0, 5, 20]", "[0, -5]"), "poison_count must be >= 0"),
        (("[0, 5, 20]", "[0, 500]"), "exceeds num_train"),
        (("[0, 5, 20]", "[]"), "empty list"),
        (("[0, 5, 20]", "[5, 5]"), "lists a value twice"),
        (('["consistent", "random"]\neval', '["consistent", "middle"]\neval'), "placement must be one of"),
        (("num_shapes = 10", "num_shapes = 10\nimage_size = 16"), "takes 32px images"),
        (("[backdoor]", "[backdoor]\npatch_size = 40\n"), "does not fit"),
        (("[backdoor]", '[backdoor]\ntarget_label = "zebra"\n'), "not a class"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds lists a seed twice"),
        (("seeds = [0, 1]", "seeds = 0"), "at least one seed"),
        (('figures = ["fig4"]', 'figures = ["fig99"]'), "unknown figures"),
        (('figures = ["fig4"]', 'attack = "nope"'), "unknown sweep attack 'nope'"),
        (("[data]", "[data\n"), "not valid TOML"),
    ],
)
def test_bad_experiment_files_exit_2_with_one_line_and_do_no_work(tmp_path, capsys, change, message):
    assert TINY.replace(*change) != TINY
    assert_refused(tmp_path, capsys, TINY.replace(*change), message)
    with pytest.raises(UsageError, match="not found"):
        load_sweep(tmp_path / "missing.toml")


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


SMALL = TINY.replace("[0, 5, 20]", "[0, 5]").replace('["consistent", "random"]\neval', '"consistent"\neval')


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


def _pool_workers(pid: int) -> list[int]:
    """Child processes of ``pid`` started by multiprocessing's spawn (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            out.append(int(stat.parent.name))
    return out


def _stored_so_far(db: Path) -> list[tuple[str, int]]:
    try:
        return stored(db) if db.exists() else []
    except sqlite3.OperationalError:  # the file exists but its tables not yet, or it is locked
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


# SIGKILL hits a sweep with two worker processes, which must die with it; Ctrl-C (SIGINT) one
# that trains in its own process (--workers 1). SIGTERM takes SIGKILL's path: no handler, the
# process ends at once and its workers with it.
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the workers")
@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGKILL, 2), (signal.SIGINT, 1)])
def test_killed_sweep_resumes_with_exactly_the_missing_trials(tmp_path, sig, workers):
    path = write(tmp_path, SMALL.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))  # 6 trials
    sweep = load_sweep(path)
    db = tmp_path / "results.sqlite"
    args = ["sweep", "run", str(path), "--db", str(db), "--no-progress", "--workers"]
    # A shell that starts this test in the background ignores SIGINT, and so would the child:
    # give it the default disposition, so that Python turns SIGINT into KeyboardInterrupt.
    proc = subprocess.Popen(
        [sys.executable, "-m", "poisonclip.cli", *args, str(workers)],
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not _stored_so_far(db):  # kill right after the first trial is committed
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.02)
    pool = _pool_workers(proc.pid)
    assert len(pool) == (workers if workers > 1 else 0)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig)
    before = {(r.config_hash, r.seed): r.finished_at for r in ResultStore(db).rows()}
    assert 0 < len(before) < len(expected_keys(sweep))  # stopped mid-sweep, whole trials only
    for trial in sweep.trials():
        assert sum((c.key, trial.seed) in before for c in trial.cells) in (0, len(trial.cells))
    # Workers die with the sweep; one still starting up (importing torch) when it died exits as
    # soon as it has started, before taking a trial.
    deadline = time.monotonic() + 60
    while [pid for pid in pool if _alive(pid)]:
        assert time.monotonic() < deadline, "a worker kept running after the kill"
        time.sleep(0.1)

    assert main([*args, "1"]) == 0  # the rerun trains in this process
    keys = stored(db)
    assert len(keys) == len(set(keys))  # no duplicates
    assert set(keys) == expected_keys(sweep)  # exactly the trial set
    after = {(r.config_hash, r.seed): r.finished_at for r in ResultStore(db).rows()}
    assert all(after[k] == v for k, v in before.items())  # finished trials were not redone
    assert sweep_status(sweep, db).done == len(sweep.trials())


EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiment_files_are_valid_and_say_what_they_cost(path):
    sweep = load_sweep(path)
    assert sweep.name == path.stem and sweep.figures and len(sweep.seeds) >= 3
    text = path.read_text()
    assert "Cost:" in text and "poisonclip sweep run" in text and "GPU cluster" in text


def test_every_figure_has_an_experiment_file():
    from poisonclip.report.figure_registry import list_figures

    assert {f for path in EXPERIMENTS for f in load_sweep(path).figures} == set(list_figures())


def test_the_listed_builtin_runners_and_matrix_attacks_are_what_their_modules_register():
    import importlib

    from poisonclip.experiments.poisoning import (
        BUILTIN_MATRIX_ATTACKS,
        get_matrix_attack,
        list_matrix_attacks,
    )
    from poisonclip.experiments.runners import BUILTIN_RUNNERS, get_runner, list_runners

    for module in {*BUILTIN_RUNNERS.values(), *BUILTIN_MATRIX_ATTACKS.values()}:
        importlib.import_module(module)
    assert list_runners() == sorted(BUILTIN_RUNNERS)  # a new built-in runner needs its line in the table
    for name, module in BUILTIN_RUNNERS.items():
        runner = get_runner(name)
        assert (runner.prepare or runner.run).__module__ == module
    assert list_matrix_attacks() == sorted(BUILTIN_MATRIX_ATTACKS)
    for name, module in BUILTIN_MATRIX_ATTACKS.items():
        assert get_matrix_attack(name).__module__ == module
