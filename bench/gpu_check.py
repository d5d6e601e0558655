"""GPU numbers in one run: five checks, one line each, each ending with a ratio measured in the run.

    .venv/bin/python bench/gpu_check.py           # on a GPU, within 8 minutes (make gpu-check)
    .venv/bin/python bench/gpu_check.py --smoke   # every check at toy size on the CPU (make gpu-check-smoke)

The first line names the device (GPU, its memory, CUDA and torch, the host's CPU); then:

1. ``demo``: ``poisonclip demo``'s clean + backdoored pair on the GPU (bf16 autocast, data on the
   device): the training loops' time, the whole demo's, and the acceptance numbers (clean
   zero-shot, ASR, z), against the same two trainings on this host's CPU as the demo runs them
   there (side by side, one process each), projected from a few steps timed here. The README
   holds the 2-core CPU's figures to set them beside.
2. ``trainer``: the in-memory trainer (``train_clip``) vs ``open_clip_train`` under ``torchrun
   --nproc-per-node 1`` (``bench_trainer.open_clip_rate``): same model, batch and data (the
   synthetic set as webdataset shards), steady samples/s from step 0's end to the last step's; and
   the trainer's FLOP utilisation against a bf16 matmul's FLOP/s measured here (kept in the FAILED
   line if open_clip_train fails).
3. ``many``: ``train_many`` grouped (S = 8 seeds as one computation) vs 8 sequential runs, steady
   trials/hour (the 6 models between S = 2 and S = 8: warm-up and start-up cancel;
   ``bench_many.time_methods``), and the same for the training loops alone.
4. ``zscore``: the z-score's pair-similarity moments at N = 1,000,000, d = 512 on the GPU vs its
   floor there, one bare float64 ``X.T @ X`` (``bench_zscore``), and agreement with the CPU.
5. ``compile``: ``torch.compile`` on vs off for the demo model: steady samples/s and compile time.

Each check runs in a process of its own (forked from this one: nothing is imported twice) with its
own time limit, cut to what is left of a budget for the whole run, so a check that fails, crashes
or hangs prints one ``FAILED`` line and the others still run. A check's process and everything it
started (torchrun, compile workers) are ended with it. Each check's own output goes to a log file.
Exit status: 0 when every check gave its line, 1 when one did not, 2 for usage errors (a full run
where torch sees no GPU among them).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from gpu_measurements import (
    FULL,
    SMOKE,
    Options,
    check_compile,
    check_demo,
    check_many,
    check_trainer,
    check_zscore,
)
from timing import machine

from poisonclip.errors import UsageError

STOP_GRACE_SECONDS = 15  # after SIGTERM, for torchrun to stop its worker (in a session of its own)
MIN_CHECK_SECONDS = 10  # a check is not started with less of the budget left


def check_device(options: Options) -> str:
    if options.device == "cpu":
        pinned = f", {options.sizes.cores} core(s) a check" if options.sizes.cores else ""
        return f"no GPU (--smoke: every check at toy size on the CPU{pinned}); {options.host}"
    if not torch.cuda.is_available():
        raise UsageError(
            f"torch sees no CUDA device here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); --smoke runs every check at toy size on the CPU"
        )
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return (
        f"{props.name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), compute capability "
        f"{props.major}.{props.minor}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible "
        f"(the checks use the first); host {options.host}"
    )


CHECKS: dict[str, Callable[[Options], str]] = {
    "demo": check_demo,
    "trainer": check_trainer,
    "many": check_many,
    "zscore": check_zscore,
    "compile": check_compile,
}


def _child(check: Callable[[Options], str], options: Options, writer: Connection, log: Path) -> None:
    """In the forked process: run ``check`` with its output in ``log``; send (status, text)."""
    os.setsid()  # a process group of its own: the parent can end it with all it started
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: SIGTERM ends it
    if options.sizes.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: options.sizes.cores])
        torch.set_num_threads(options.sizes.cores)
    out = open(log, "w", buffering=1)  # noqa: SIM115 - open until the process ends
    os.dup2(out.fileno(), 1)  # what it starts (torchrun, compile workers) and C libraries
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out  # Python's own, whatever they were (a test's capture)
    try:
        writer.send(("ok", check(options)))
    except BaseException as err:  # whatever it is (SystemExit too), the parent prints it as the line
        traceback.print_exc()
        lines = [line for line in str(err).splitlines() if line.strip()] or [""]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        if isinstance(err, UsageError):
            writer.send(("usage", message))
        else:
            writer.send(("error", f"{type(err).__name__}: {message}"))


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a process that is not a zombie (Linux's /proc: a zombie
    still takes signals, and whether anything reaps orphans depends on the machine's init)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # it ended while we looked
        if state != "Z" and int(group) == pgid:
            return True
    return False


def _end_group(pgid: int) -> None:
    """End process group ``pgid`` (a check and what it started): SIGTERM first, so that torchrun
    stops its worker (which runs in a session of its own), then SIGKILL for what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_check(
    name: str, check: Callable[[Options], str], options: Options, timeout: float, log_dir: Path
) -> tuple[str, str]:
    """Run ``check(options)`` in a forked process for at most ``timeout`` seconds: (status, text),
    status ``ok`` (text: the result), ``usage`` or ``error`` (text: what went wrong). Its output
    goes to ``log_dir/NAME.log``; when it returns, the process and all it started have ended."""
    context = multiprocessing.get_context("fork")  # no re-import; CUDA is first used in the child
    reader, writer = context.Pipe(duplex=False)
    log = log_dir / f"{name}.log"
    child = context.Process(target=_child, args=(check, options, writer, log), name=f"gpu-check-{name}")
    child.start()
    writer.close()
    finished = False
    try:  # the clean-up below also runs when this process is told to stop (SIGTERM, Ctrl-C)
        finished = reader.poll(timeout)  # a message, or the end of the pipe: the process is gone
        if not finished:
            return "error", f"timed out after {timeout:.0f} s; log {log}"
        try:
            status, text = reader.recv()
        except EOFError:  # it ended without a word: killed (for memory?) or crashed
            child.join()
            return "error", f"its process died (exit code {child.exitcode}); log {log}"
        return status, text if status != "error" else f"{text}; log {log}"
    finally:
        reader.close()
        if finished:
            child.join(STOP_GRACE_SECONDS)  # reaped: a zombie would hold its group
        _end_group(child.pid)
        child.join()


def run_all(options: Options, names: list[str], budget: float, log_dir: Path, start: float) -> int:
    """The device line, then a line per check in ``names``, within ``budget`` seconds of ``start``;
    the exit status."""
    timeouts = options.sizes.timeouts
    status, text = run_check("device", check_device, options, min(timeouts["device"], budget), log_dir)
    if status == "usage":
        print(f"gpu-check: error: {text}", file=sys.stderr)
        return 2
    print(f"gpu-check device: {text if status == 'ok' else 'FAILED: ' + text}", flush=True)
    if status != "ok":
        return 1
    done = 0
    for name in names:
        left = budget - (time.perf_counter() - start)
        if left < MIN_CHECK_SECONDS:
            print(f"gpu-check {name}: FAILED: not run, the {budget:.0f} s budget is spent", flush=True)
            continue
        began = time.perf_counter()
        status, text = run_check(name, CHECKS[name], options, min(timeouts[name], left), log_dir)
        took = f"{time.perf_counter() - began:.0f} s"
        if status == "ok":
            done += 1
            print(f"gpu-check {name} [{took}]: {text}", flush=True)
        else:
            print(f"gpu-check {name} [{took}]: FAILED: {text}", flush=True)
    print(
        f"gpu-check: {done} of {len(names)} checks gave their numbers in {time.perf_counter() - start:.0f} s "
        f"(budget {budget:.0f} s); logs in {log_dir}"
    )
    return 0 if done == len(names) else 1


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="every check at toy size on the CPU (< 1 minute)"
    )
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="these checks only")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda, and cpu with --smoke")
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole run (default 440, 300 with --smoke)"
    )
    parser.add_argument("--log-dir", type=Path, help="a log file per check (default: a new temporary folder)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device == "cpu" and not args.smoke:
        parser.error("the full-size checks need a GPU: --device cpu goes with --smoke")
    sizes = SMOKE if args.smoke else FULL
    budget = sizes.budget if args.budget is None else args.budget
    if budget <= 0:
        parser.error("--budget must be positive")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    names = [name for name in CHECKS if not args.only or name in args.only]
    # `timeout` and the device tool end a run with SIGTERM: leave through run_check's clean-up,
    # which ends the running check's processes (in sessions of their own, they would live on).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run_all(Options(device, sizes, machine()), names, budget, log_dir, start)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
