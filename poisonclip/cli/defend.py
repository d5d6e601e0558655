"""``poisonclip defend``: one defense (filter, cleanclip, roclip, safeclip) on one model or dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonclip.cli import options
from poisonclip.errors import UsageError

# defend options -> fields of the defense's parameter dataclass (poisonclip.defend.*Params)
DEFENSE_OPTIONS = {
    "detector": "detector",
    "fraction": "fraction",
    "lrs": "lrs",
    "finetune_epochs": "epochs",
    "finetune_batch_size": "batch_size",
    "clip_weight": "clip_weight",
    "inmodal_weight": "inmodal_weight",
    "validation_fraction": "validation_fraction",
    "pool_size": "pool_size",
    "break_epoch": "break_epoch",
    "warmup_epochs": "warmup_epochs",
    "low_lr_factor": "low_lr_factor",
    "first_threshold": "first_threshold",
    "fraction_step": "fraction_step",
    "max_fraction": "max_fraction",
}
# what a defense may take (DefenseContext fields) -> the options that give it
INPUT_FLAGS = {"model": "--checkpoint (or --pretrained)", "dataset": "--data", "clean": "--clean-data"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "defend", run, "apply a defense (filter, cleanclip, roclip, safeclip) to one model or dataset"
    )
    p.add_argument("defense", help="filter, cleanclip, roclip or safeclip (poisonclip list defenses)")
    options.add_out_dir(p)
    p.add_argument("--checkpoint", help="the undefended model (filter, cleanclip)")
    p.add_argument(
        "--pretrained", help=options.PRETRAINED_HELP + ": the model cleanclip cleans, instead of --checkpoint"
    )
    p.add_argument(
        "--data", nargs="+", help="the (poisoned) training set: CSVs or shards (filter, roclip, safeclip)"
    )
    p.add_argument("--manifest", nargs="+", help="poison manifests, to report what the defense flagged")
    p.add_argument("--clean-data", nargs="+", help="the defender's clean pairs (cleanclip)")
    options.add_train_options(p)
    g = p.add_argument_group("filter")
    g.add_argument("--detector", help="detector whose ranking is filtered (default slof)")
    g.add_argument(
        "--fraction", type=float, help="fraction of the training set dropped, in (0, 1) (default 0.05)"
    )
    g = p.add_argument_group("cleanclip (published: batch 64, 10 epochs, lr 1e-5, weights 1 and 1)")
    g.add_argument("--lrs", type=float, nargs="+", help="learning rates tried (default 1e-5 1e-4 1e-3)")
    g.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 10)")
    g.add_argument("--finetune-batch-size", type=int, help="fine-tuning batch size (default 64)")
    g.add_argument("--clip-weight", type=float, help="weight of the CLIP loss (default 1)")
    g.add_argument("--inmodal-weight", type=float, help="weight of the in-modal loss (default 1)")
    g.add_argument(
        "--validation-fraction", type=float, help="clean pairs held out to choose the lr (default 0.2)"
    )
    g = p.add_argument_group("roclip")
    g.add_argument("--pool-size", type=int, help="captions in the FIFO pool, << dataset (default 1024)")
    g.add_argument(
        "--break-epoch", type=int, help="match images to pool captions every Nth epoch (default 2)"
    )
    g = p.add_argument_group("safeclip")
    g.add_argument("--warmup-epochs", type=int, help="in-modal warm-up epochs (default 1)")
    g.add_argument("--low-lr-factor", type=float, help="lr factor of the one cross-modal epoch (default 0.1)")
    g.add_argument("--first-threshold", type=float, help="first split: P(safe component) above (default 0.9)")
    g.add_argument("--fraction-step", type=float, help="safe fraction growth per epoch (default 0.01)")
    g.add_argument("--max-fraction", type=float, help="largest safe fraction (default 0.85)")
    options.add_csv_options(p)
    options.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    """Run one defense and write OUT/checkpoint/ (evaluate it with poisonclip evaluate) and
    OUT/defense.json (parameters, cost, the defense's own record; with --manifest, how many
    poisons it flagged). filter: rank --data with a detector on --checkpoint, drop the top
    --fraction, retrain from scratch. cleanclip: fine-tune --checkpoint on --clean-data with CLIP
    + in-modal losses at each of --lrs, keep the lowest clean validation loss. roclip and
    safeclip: train from scratch on --data. Training options as for poisonclip train (for
    cleanclip only optimizer, weight decay, warm-up, device and precision apply); with
    --checkpoint, the model is the checkpoint's architecture unless --model names one."""
    from poisonclip.data.reading import read_datasets
    from poisonclip.defend import DefenseContext, get_defense
    from poisonclip.defend.output import CHECKPOINT_DIR, RECORD_NAME, write_defense
    from poisonclip.defend.params import check_defense_inputs, defense_params
    from poisonclip.detect.inputs import read_training_set
    from poisonclip.train.checkpoint import checkpoint_model, load_checkpoint_as
    from poisonclip.train.loop import check_device
    from poisonclip.train.model import get_model_config, image_size_of, initial_model, resolve_pretrained

    defense = get_defense(args.defense)
    params = defense_params(
        defense,
        {field: getattr(args, dest) for dest, field in DEFENSE_OPTIONS.items()},
        {field: f"--{dest.replace('_', '-')}" for dest, field in DEFENSE_OPTIONS.items()},
    )
    config = options.train_config(args)
    if args.checkpoint and args.model is None:
        # the checkpoint's own architecture (what a filter retrains, what cleanclip fine-tunes)
        config = config.replace(model=checkpoint_model(args.checkpoint))
    check_device(config.device)
    if args.pretrained and (defense.name != "cleanclip" or args.checkpoint):
        raise UsageError("--pretrained names the model that cleanclip cleans, instead of --checkpoint")
    given = {"model": args.checkpoint or args.pretrained, "dataset": args.data, "clean": args.clean_data}
    check_defense_inputs(defense, {need: bool(value) for need, value in given.items()}, INPUT_FLAGS)
    if args.manifest and not args.data:
        raise UsageError("--manifest labels the samples of --data, which this defense does not use")
    model_config = get_model_config(config.model)
    if args.pretrained:  # a tag's weights are downloaded now, before any other work
        resolve_pretrained(config.model, args.pretrained)
    model = load_checkpoint_as(args.checkpoint, model_config) if args.checkpoint else None
    if args.pretrained:
        model = initial_model(config, model_config).eval()
    image_size, csv, progress = image_size_of(model_config), options.csv_format(args), options.progress(args)
    training = clean = None
    if args.data:
        training = read_training_set(args.data, args.manifest, image_size, csv, progress)
    if args.clean_data:
        clean = read_datasets(args.clean_data, image_size, csv, progress)
    dataset = training.dataset if training else None
    context = DefenseContext(config, dataset, model, clean, progress=progress)
    outcome = defense.run(context, params)
    keys, manifest = (dataset.keys, training.manifest) if training else (None, None)
    write_defense(args.out, defense.name, params, outcome, model_config, config, keys, manifest)
    print(
        f"{defense.name}: {outcome.seconds:.1f} s; defended checkpoint in {Path(args.out) / CHECKPOINT_DIR}"
    )
    print(f"record in {Path(args.out) / RECORD_NAME}; evaluate with: poisonclip evaluate --checkpoint "
          f"{Path(args.out) / CHECKPOINT_DIR} ...")  # fmt: skip
    return 0
