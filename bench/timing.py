"""What every benchmark needs: a robust timer (right on a GPU too), the machine it ran on, the
machine's peak, and the synthetic data to train on.

Imported by the ``bench_*.py`` scripts beside it, ``gpu_check.py`` and ``gpu_measurements.py`` (run
as ``python bench/bench_x.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from poisonclip.data import ImageTextDataset, SyntheticConfig, make_synthetic


def synchronize() -> None:
    """Wait for the GPU's queued work: CUDA runs asynchronously, so a clock read without this
    measures when the work was queued, not when it was done. Nothing to wait for on a CPU."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
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


def matmul_flops(
    dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """FLOP/s of one large square matmul in ``dtype`` on ``device`` (on a CPU with torch's default
    threads): the peak a training step could reach on this machine (best of ``repeats``, after a
    warm-up, in which the BLAS library picks its kernel)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def synthetic_dataset(num_train: int) -> ImageTextDataset:
    """``num_train`` pairs of the synthetic training set in memory (uint8 [N, 3, H, W] images, as
    the readers return them), without writing files: what the benchmarks train on."""
    train, _ = make_synthetic(SyntheticConfig(num_train=num_train, num_test=1))
    return ImageTextDataset(
        keys=[str(i) for i in range(num_train)],
        images=torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous(),
        captions=list(train.captions),
        labels=torch.from_numpy(train.labels).long(),
    )
