"""Many seeds at once: trials/hour of ``train_many``'s methods vs S sequential trainings.

Baseline: S models trained one after another in this process with poisonclip's trainer
(``train_clip``, which on a multi-core CPU splits each batch over single-thread worker threads),
as a user loops over seeds (``sequential``). For reference, the same loop with a plain training
step that leaves the parallelism to torch's intra-op threads (``plain``: the trainer before
issue 8). Compared: ``processes`` (one single-thread worker process per core, models one by one),
``grouped`` (all S as one computation with stacked weights, in this process, torch's threads) and
``grouped-processes`` (one single-thread worker per core, each training its share grouped). S = 1,
4, 8 demo models (``toy-vit-w64``, batch 64) on the synthetic data, the same steps each; a trial
is one trained model.

Two rates per method: over the whole call at S = 8 (worker start-up included: ~2 s, which weighs
far more on these short trainings than on real ones of ~3,000 steps), and the steady rate that
real sweeps see, from the 4 extra models between S = 4 and S = 8 (start-up cancels). The ratio
is the steady rate of ``auto``'s choice over ``sequential``'s.

    .venv/bin/python bench/bench_many.py        # ~4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from timing import machine, synthetic_dataset

from poisonclip.data import ImageTextDataset
from poisonclip.train.config import TrainConfig, load_preset
from poisonclip.train.loop import TrainStats, train_clip
from poisonclip.train.many import pick_method, train_many
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import ClipObjective

METHODS = ("sequential", "processes", "grouped", "grouped-processes")
Timings = dict[tuple[int, str], tuple[float, list[TrainStats]]]


def time_methods(
    dataset: ImageTextDataset,
    config: TrainConfig,
    seeds: Sequence[int],
    methods: Sequence[str],
    plain: bool = False,
) -> Timings:
    """(wall seconds, each model's stats) of S models (S in ``seeds``, models seeded 0..S-1) trained
    on ``dataset`` by each of ``train_many``'s ``methods`` (S = 1: ``sequential`` only), and with
    ``plain``, by a loop of ``train_clip`` with the plain objective (key ``"plain"``)."""
    model_config = get_model_config(config.model)
    tokens = tokenize(dataset.captions, model_config) if plain else None
    timings: Timings = {}
    for s in seeds:
        configs = [config.replace(seed=seed) for seed in range(s)]
        if plain:
            start = time.perf_counter()
            stats = [
                train_clip(
                    create_model(model_config, seed=c.seed),
                    dataset.images,
                    tokens,
                    c,
                    progress=False,
                    objective=ClipObjective(),
                )
                for c in configs
            ]
            timings[s, "plain"] = (time.perf_counter() - start, stats)
        for method in methods if s > 1 else ("sequential",):
            start = time.perf_counter()
            results = train_many([dataset] * s, configs, method=method)
            timings[s, method] = (time.perf_counter() - start, [stats for _, _, stats in results])
    return timings


def steady_rate(timings: Timings, small: int, large: int, method: str) -> float:
    """Trials/hour of ``method`` from the models between S = ``small`` and S = ``large``: the costs
    every call pays once (worker start-up, warm-up) cancel."""
    return (large - small) * 3600 / (timings[large, method][0] - timings[small, method][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8], help="values of S")
    args = parser.parse_args()

    config = load_preset("demo").replace(epochs=1, device="cpu", precision="fp32")
    dataset = synthetic_dataset(args.steps * config.batch_size)
    timings = time_methods(dataset, config, args.seeds, METHODS, plain=True)

    small, large = sorted(args.seeds)[-2:]
    whole = {m: large * 3600 / timings[large, m][0] for m in ("plain", *METHODS)}
    steady = {m: steady_rate(timings, small, large, m) for m in ("plain", *METHODS)}
    auto = pick_method([config], torch.get_num_threads())
    print(
        f"multi-seed [{machine()}]: {config.model}, batch {config.batch_size}, {args.steps} steps/model; "
        f"one model: {3600 / timings[min(args.seeds), 'sequential'][0]:,.0f} trials/hour; S={large}, "
        f"whole call / steady (S={small}->{large}) trials/hour: "
        f"{', '.join(f'{m} {whole[m]:,.0f} / {steady[m]:,.0f}' for m in whole)}; steady "
        f"{max(METHODS, key=steady.get)} vs plain {max(steady.values()) / steady['plain']:.2f}x; "
        f"steady auto ({auto}) vs sequential {steady[auto] / steady['sequential']:.2f}x"
    )


if __name__ == "__main__":
    main()
