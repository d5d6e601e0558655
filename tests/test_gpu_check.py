"""bench/gpu_check.py: its smoke mode runs every check (so the script cannot rot between GPU
loans), and a check that fails, dies or hangs costs only its own line."""

import functools
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
CHECKS = ("demo", "trainer", "many", "zscore", "compile")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))  # the scripts import their neighbours as top-level modules
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCH))


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_smoke_gives_every_check_its_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 7, done.stdout
    assert lines[0].startswith("gpu-check device: no GPU (--smoke")
    for name, line in zip(CHECKS, lines[1:6], strict=True):
        assert re.match(rf"gpu-check {name} \[\d+ s\]: {name} on cpu", line), line
        assert re.search(r" -?[\d,]+\.\d+x?$", line), line  # it ends with its ratio
        assert not re.search(r"\b(nan|inf)\b", line), line
    assert lines[6].startswith("gpu-check: 5 of 5 checks gave their numbers in ")
    assert {p.name for p in tmp_path.iterdir()} == {f"{name}.log" for name in ("device", *CHECKS)}


def test_a_failing_dying_or_hanging_check_costs_only_its_line(gpu_check, tmp_path):
    run = functools.partial(
        gpu_check.run_check,
        options=gpu_check.Options("cpu", gpu_check.SMOKE, "host"),
        timeout=3,
        log_dir=tmp_path,
    )
    pid_file = tmp_path / "sleep.pid"

    def raises(options):
        raise ValueError("what went wrong\ndetails\nits last line")

    def hangs(options):  # and leaves a process of its own behind
        pid_file.write_text(str(subprocess.Popen(["sleep", "600"]).pid))
        time.sleep(600)

    assert run("works", lambda options: "numbers 1.00x") == ("ok", "numbers 1.00x")
    status, text = run("raises", raises)
    assert status == "error"
    assert text == f"ValueError: what went wrong ... its last line; log {tmp_path / 'raises.log'}"
    assert "Traceback" in (tmp_path / "raises.log").read_text()
    assert run("dies", lambda options: os._exit(3)) == (
        "error",
        f"its process died (exit code 3); log {tmp_path / 'dies.log'}",
    )
    start = time.monotonic()
    assert run("hangs", hangs)[1].startswith("timed out after 3 s; log ")
    assert time.monotonic() - start < 10
    assert not running(int(pid_file.read_text()))  # ended with the check


@pytest.mark.parametrize("argv", [["--only", "nonsense"], ["--device", "cpu"], ["--smoke", "--budget", "0"]])
def test_usage_errors_exit_2(gpu_check, argv):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(argv)
    assert exit_.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the full run would start")
def test_the_full_run_needs_a_gpu(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--log-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gpu-check: error: torch sees no CUDA device here")


def test_trainer_check_keeps_our_numbers_when_open_clip_train_fails(gpu_check, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("open_clip_train failed (exit 1):\nits stderr")

    monkeypatch.setattr(importlib.import_module("gpu_measurements"), "open_clip_rate", fails)
    with pytest.raises(RuntimeError) as failure:
        gpu_check.check_trainer(gpu_check.Options("cpu", gpu_check.SMOKE, "host"))
    message = str(failure.value)
    assert message.startswith("open_clip_train failed (exit 1): (ours alone: ")
    assert re.search(r"ours alone: [\d,]+ samples/s; [\d.]+ MFLOP/sample .* of a 256x256 float32", message)
    assert "its stderr" in str(failure.value.__cause__)  # printed to the check's log with the traceback
