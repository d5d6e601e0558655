"""``poisonclip demo``: synthetic data -> clean and backdoored model -> ASR, z-score, figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonclip.attacks.triggers import PLACEMENTS
from poisonclip.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "demo", run, "synthetic data -> clean and backdoored model -> ASR, z-score, figure"
    )
    options.add_out_dir(p, "output directory", default="results/demo")
    p.add_argument("--num-train", type=int, default=20_000, help="clean training pairs")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--poison-count", type=int, default=100, help="poisons added to the training set")
    p.add_argument("--seed", type=int, default=0, help="seed of the poison selection")
    options.add_backdoor_options(
        p, label_default="star", label_help="the label the trigger should cause: a shape of the synthetic set"
    )
    p.add_argument(
        "--eval-placement",
        choices=PLACEMENTS,
        help="where the patch goes on test images (default: the trigger's default placement)",
    )
    options.add_train_options(p)
    options.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    """Generate the embedded synthetic dataset, poison it with a backdoor trigger (the paper's
    checkerboard by default), train a clean and a backdoored model, and compare them."""
    from poisonclip.attacks.triggers.options import trigger_from_args
    from poisonclip.data.synthetic import SyntheticConfig
    from poisonclip.experiments.demo import DemoConfig, format_table, run_demo
    from poisonclip.train.loop import check_device

    config = DemoConfig(
        data=SyntheticConfig(num_train=args.num_train, seed=args.data_seed),
        train=options.train_config(args),
        target_label=args.target_label,
        poison_count=args.poison_count,
        trigger=trigger_from_args(args),
        eval_placement=args.eval_placement,
        seed=args.seed,
    )
    check_device(config.train.device)
    summary = run_demo(config, args.out, progress=options.progress(args))
    print(format_table(summary))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'similarity_histograms.png'}")
    return 0
