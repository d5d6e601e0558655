"""Run independent CPU jobs (e.g. trainings of different models) side by side in processes.

On a small CPU, k single-thread processes beat one k-thread process: DESIGN measured two
single-thread trainings at 1.31x the samples/s of one two-thread training (small matmuls do not
scale across threads). Threads per process are set so processes x threads <= cores, because
oversubscription made steps up to 40x slower.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_in_processes(
    fn: Callable[..., Any], jobs: Sequence[dict[str, Any]], workers: int | None = None
) -> list[Any]:
    """``[fn(**job) for job in jobs]``, computed in up to ``workers`` (default: cores) processes.

    ``fn`` must be importable (module level) and its arguments and result picklable. With one
    worker, or one job, everything runs in this process.
    """
    cores = available_cores()
    workers = max(1, min(len(jobs), workers or cores))
    if workers == 1:
        return [fn(**job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork: torch's thread pools do not survive it
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_set_threads, initargs=(max(1, cores // workers),)
    ) as pool:
        futures = [pool.submit(fn, **job) for job in jobs]
        return [future.result() for future in futures]


def single_thread_pool(workers: int) -> ThreadPoolExecutor:
    """``workers`` threads that each run torch ops on one thread, for slices of one computation.

    On a busy machine an op split over torch's threads waits for the scheduler at every step
    (5-15x slower training measured on 2 cores); a slice per single-thread worker keeps going,
    and on an idle machine is as fast. Threads share the model and data and need no start-up
    (torch releases the GIL inside ops).
    """
    import torch

    previous = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=_one_torch_thread)
    # Start every worker now: torch.set_num_threads also sets the count that threads created later
    # start with, which is put back once all workers have set their own.
    started = threading.Barrier(workers)
    list(pool.map(lambda _: started.wait(), range(workers)))
    torch.set_num_threads(previous)
    return pool


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch ops of this thread on ``threads`` threads inside the block; the count is put back."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _one_torch_thread() -> None:
    import torch

    # A thread's first torch call takes the process's current count, overriding an earlier
    # set_num_threads in that thread: make that first call happen before setting ours.
    torch.get_num_threads()
    torch.set_num_threads(1)


def map_slices(fn: Callable[[Any], Any], items: Iterable[Any], cpu: bool) -> list[Any]:
    """``[fn(item) for item in items]``; on a ``cpu`` with several torch threads, computed by as many
    single-thread workers. ``fn`` must set its own thread-local torch state (inference mode,
    autocast): the workers do not inherit the caller's."""
    import torch

    items, threads = list(items), torch.get_num_threads()
    if not cpu or threads == 1 or len(items) == 1:
        return [fn(item) for item in items]
    with single_thread_pool(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))
