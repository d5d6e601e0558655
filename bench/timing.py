"""What every benchmark needs: a robust timer, the machine it ran on, and the machine's peak.

Imported by the ``bench_*.py`` scripts beside it (run as ``python bench/bench_x.py``, which puts
this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls: robust to one call disturbed by another process."""
    return statistics.median(seconds(fn) for _ in range(repeats))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Taken when a benchmark starts: later the average counts the benchmark's own threads.
LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    """CPU, cores, torch version and the 1-minute load average when the benchmark started (numbers
    taken under load mislead)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {cores} cores, torch {torch.__version__}, load {LOAD_AT_START:.2f} at start"


def matmul_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one large square matmul in ``dtype`` with torch's default threads: the peak a
    training step could reach on this machine (best of ``repeats``, after a warm-up)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best
