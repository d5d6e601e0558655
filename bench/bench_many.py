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

import torch
from timing import machine

from poisonclip.data import ImageTextDataset, SyntheticConfig, make_synthetic
from poisonclip.train.config import load_preset
from poisonclip.train.loop import ClipObjective, train_clip
from poisonclip.train.many import pick_method, train_many
from poisonclip.train.model import create_model, get_model_config, tokenize

METHODS = ("sequential", "processes", "grouped", "grouped-processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per model")
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
    model_config = get_model_config(config.model)
    tokens = tokenize(dataset.captions, model_config)
    seconds: dict[tuple[int, str], float] = {}
    for s in args.seeds:
        configs = [config.replace(seed=seed) for seed in range(s)]
        start = time.perf_counter()
        for c in configs:
            model = create_model(model_config, seed=c.seed)
            train_clip(model, dataset.images, tokens, c, progress=False, objective=ClipObjective())
        seconds[s, "plain"] = time.perf_counter() - start
        for method in METHODS if s > 1 else ("sequential",):
            start = time.perf_counter()
            train_many([dataset] * s, configs, method=method)
            seconds[s, method] = time.perf_counter() - start

    small, large = sorted(args.seeds)[-2:]
    whole = {m: large * 3600 / seconds[large, m] for m in ("plain", *METHODS)}
    steady = {
        m: (large - small) * 3600 / (seconds[large, m] - seconds[small, m]) for m in ("plain", *METHODS)
    }
    auto = pick_method([config], torch.get_num_threads())
    print(
        f"multi-seed [{machine()}]: {config.model}, batch {config.batch_size}, {args.steps} steps/model; "
        f"one model: {3600 / seconds[min(args.seeds), 'sequential']:,.0f} trials/hour; S={large}, "
        f"whole call / steady (S={small}->{large}) trials/hour: "
        f"{', '.join(f'{m} {whole[m]:,.0f} / {steady[m]:,.0f}' for m in whole)}; steady "
        f"{max(METHODS, key=steady.get)} vs plain {max(steady.values()) / steady['plain']:.2f}x; "
        f"steady auto ({auto}) vs sequential {steady[auto] / steady['sequential']:.2f}x"
    )


if __name__ == "__main__":
    main()
