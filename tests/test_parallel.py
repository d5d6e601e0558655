import os

import torch

from poisonclip.train.parallel import run_in_processes


def job(seed: int) -> tuple[int, int, float]:
    return (
        os.getpid(),
        torch.get_num_threads(),
        torch.randn(3, generator=torch.Generator().manual_seed(seed)).sum().item(),
    )


def test_run_in_processes_matches_sequential_and_keeps_order():
    jobs = [{"seed": s} for s in range(4)]
    sequential = run_in_processes(job, jobs, workers=1)
    parallel = run_in_processes(job, jobs, workers=2)
    assert [r[2] for r in parallel] == [r[2] for r in sequential]
    assert {r[0] for r in sequential} == {os.getpid()}
    assert os.getpid() not in {r[0] for r in parallel}
    assert all(threads * 2 <= max(2, os.cpu_count() or 1) for _, threads, _ in parallel)
