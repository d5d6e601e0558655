"""Train many models at once, the fastest way this machine has: ``train_many``.

A data point of the paper is many independently trained models (8–32 seeds). How to train S of
them at once depends on the device (bench/bench_many.py measures every method; README has the
numbers):

* ``grouped``: models whose configs differ only in ``seed`` and whose datasets have one size train
  as one computation with stacked weights (``poisonclip.train.grouped``), in this process.
* ``processes``: one single-thread worker process per core, each training its share one by one.
* ``grouped-processes``: one single-thread worker per core, each training its share grouped.
* ``sequential``: one after the other in this process (``train_clip``, which shards each batch
  over the CPU threads).

``auto`` picks ``grouped`` on a GPU (a toy model alone leaves it idle) and with one torch thread
(inside a sweep's single-thread worker), ``processes`` on a multi-core CPU: there grouping gains
nothing per core (0.98–1.09x the CPU time of one model at a time) and single-thread processes
beat the threads of one process (steady 1.18–1.58x ``sequential`` on 2 cores over four runs;
bench/bench_many.py). Models that cannot be grouped (another architecture, configs
differing in more than the seed, datasets of different sizes) train separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import open_clip
import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.train.config import TrainConfig
from poisonclip.train.grouped import groupable, train_grouped
from poisonclip.train.loop import TrainStats, resolve_device, train_clip
from poisonclip.train.model import create_model, get_model_config, initial_model, tokenize
from poisonclip.train.parallel import run_in_processes
from poisonclip.train.preprocess import pretrained_image_stats, set_image_stats

METHODS = ("auto", "sequential", "grouped", "processes", "grouped-processes")


def train_many(
    datasets: Sequence[ImageTextDataset],
    configs: Sequence[TrainConfig],
    method: str = "auto",
    workers: int | None = None,
    progress: bool = False,
) -> list[tuple[open_clip.CLIP, dict, TrainStats]]:
    """Train one model per (dataset, config), as ``train_model`` would: [(model, model config,
    stats)] in the order given. ``workers``: processes for the process methods (default: torch's
    thread count, so inside a single-thread sweep worker nothing more is started).

    Each model is built from its ``config.seed`` and trained with the CLIP loss; the result equals
    separate ``train_model`` runs up to float rounding, whatever the method.
    """
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}, got {method!r}")
    if len(datasets) != len(configs):
        raise UsageError(f"{len(datasets)} datasets but {len(configs)} configs")
    workers = workers or torch.get_num_threads()
    method = pick_method(configs, workers) if method == "auto" else method
    jobs = [{"dataset": d, "config": c} for d, c in zip(datasets, configs, strict=True)]
    if method in ("sequential", "processes"):
        chunks = [[i] for i in range(len(jobs))]
    elif method == "grouped":  # one computation per group, in this process
        chunks = _groups(configs, datasets)
    else:
        chunks = [chunk for group in _groups(configs, datasets) for chunk in _split(group, workers)]
    runs = [
        {"jobs": [jobs[i] for i in chunk], "progress": progress and n == 0} for n, chunk in enumerate(chunks)
    ]
    in_processes = method in ("processes", "grouped-processes")
    results = run_in_processes(_train_chunk, runs, workers=workers if in_processes else 1)
    trained = dict(
        zip((i for chunk in chunks for i in chunk), (r for rs in results for r in rs), strict=True)
    )
    return [_rebuild(configs[i], *trained[i]) for i in range(len(jobs))]


def pick_method(configs: Sequence[TrainConfig], workers: int) -> str:
    """``auto``'s choice (see the module docstring): measured on 2 CPU cores, bench/bench_many.py."""
    if resolve_device(configs[0].device).type == "cuda" or workers == 1:
        return "grouped"
    return "processes"


def _groups(configs: Sequence[TrainConfig], datasets: Sequence[ImageTextDataset]) -> list[list[int]]:
    """Indices of the jobs that can train as one computation: one config but for the seed, one
    dataset size (``_train_chunk`` also checks the architecture)."""
    groups: dict[tuple, list[int]] = {}
    for i, (config, dataset) in enumerate(zip(configs, datasets, strict=True)):
        groups.setdefault((config.replace(seed=0), len(dataset)), []).append(i)
    return list(groups.values())


def _split(group: list[int], parts: int) -> list[list[int]]:
    """``group`` in up to ``parts`` contiguous chunks of near-equal size."""
    size, extra = divmod(len(group), parts)
    chunks, start = [], 0
    for i in range(min(parts, len(group))):
        end = start + size + (i < extra)
        chunks.append(group[start:end])
        start = end
    return chunks


def _train_chunk(jobs: list[dict[str, Any]], progress: bool) -> list[tuple[dict, TrainStats]]:
    """Train ``jobs`` (in a worker or here): as one computation if they can be, else one by one.
    Returns each model's state dict (on the CPU: cheap to send back) and stats."""
    configs = [job["config"] for job in jobs]
    model_configs = [get_model_config(c.model) for c in configs]
    models = [initial_model(c, mc) for mc, c in zip(model_configs, configs, strict=True)]
    data = [
        (job["dataset"].images, tokenize(job["dataset"].captions, mc))
        for job, mc in zip(jobs, model_configs, strict=True)
    ]
    datasets = [job["dataset"] for job in jobs]
    if len(jobs) > 1 and all(groupable(m) for m in models) and len(_groups(configs, datasets)) == 1:
        stats = train_grouped(models, data, configs, progress)
    else:
        stats = [train_clip(m, *d, c, progress) for m, d, c in zip(models, data, configs, strict=True)]
    return [({k: v.cpu() for k, v in m.state_dict().items()}, s) for m, s in zip(models, stats, strict=True)]


def _rebuild(config: TrainConfig, state: dict, stats: TrainStats) -> tuple[open_clip.CLIP, dict, TrainStats]:
    model_config = get_model_config(config.model)
    model = create_model(model_config, seed=config.seed)
    model.load_state_dict(state)
    set_image_stats(model, pretrained_image_stats(config.model, config.pretrained))  # as trained
    return model.to(resolve_device(config.device)).eval(), model_config, stats
