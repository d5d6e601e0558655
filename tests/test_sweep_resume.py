"""A sweep killed mid-run (SIGKILL, Ctrl-C) ends its workers and resumes with the missing trials."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.experiments.grid import load_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.experiments.sweep import sweep_status
from tests.sweep_files import SMALL, expected_keys, stored, write


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
