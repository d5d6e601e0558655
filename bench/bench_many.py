"""Many seeds at once: trials/hour of ``train_many``'s methods vs S sequential trainings.

Baseline: S models trained one after another in this process with the standard trainer
(``train_clip`` with torch's default threads, which splits each batch over them), as a user
loops over seeds. Compared: ``processes`` (one single-thread worker process per core, models one
by one), ``grouped`` (all S as one computation with stacked weights, in this process) and
``grouped-processes`` (one single-thread worker per core, each training its share grouped), for
S = 1, 4, 8 demo models (``toy-vit-w64``, batch 64) on the synthetic data, each for the same
steps. A trial here is one trained model; worker start-up is counted.

    .venv/bin/python bench/bench_many.py        # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import machine

from poisonclip.data import ImageTextDataset, SyntheticConfig, make_synthetic
from poisonclip.train.config import load_preset
from poisonclip.train.many import pick_method, train_many

METHODS = ("sequential", "processes", "grouped", "grouped-processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8], help="values of S")
    args = parser.parse_args()

    config = load_preset("demo").replace(epochs=1, device="cpu", precision="fp32")
    train, _ = make_synthetic(SyntheticConfig(num_train=args.steps * config.batch_size, num_test=1))
    dataset = ImageTextDataset(
        keys=[str(i) for i in range(len(train.captions))],
        images=torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous(),  # uint8 [N, 3, H, W]
        captions=list(train.captions),
        labels=torch.from_numpy(train.labels).long(),
    )
    rates: dict[tuple[int, str], float] = {}
    for s in args.seeds:
        configs = [config.replace(seed=seed) for seed in range(s)]
        for method in METHODS if s > 1 else ("sequential",):
            start = time.perf_counter()
            train_many([dataset] * s, configs, method=method)
            rates[s, method] = s * 3600 / (time.perf_counter() - start)

    largest = max(args.seeds)
    auto = pick_method([config])
    table = "; ".join(
        f"S={s}: " + ", ".join(f"{m} {rate:,.0f}" for (k, m), rate in rates.items() if k == s)
        for s in args.seeds
    )
    print(
        f"multi-seed [{machine()}]: {config.model}, batch {config.batch_size}, {args.steps} steps/model, "
        f"trials/hour: {table}; auto ({auto}) vs sequential at S={largest} "
        f"{rates[largest, auto] / rates[largest, 'sequential']:.2f}x"
    )


if __name__ == "__main__":
    main()
