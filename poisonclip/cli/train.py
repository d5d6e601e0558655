"""``poisonclip train``: a CLIP model in memory, or handed to open_clip_train (torchrun, SLURM)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from poisonclip.cli import options
from poisonclip.errors import UsageError
from poisonclip.train.config import TrainConfig  # light: no torch

# Above this, a preset's from-scratch learning rate would likely wreck pretrained weights
# (CleanCLIP fine-tunes a pretrained RN50 at 1e-5).
FINETUNE_LR_NOTE_ABOVE = 1e-4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "train", run, "train a CLIP model in memory, or hand it to open_clip_train (torchrun, SLURM)"
    )
    p.add_argument(
        "--data", required=True, nargs="+", help="CSV files or webdataset URLs to train on (concatenated)"
    )
    options.add_out_dir(p, "checkpoint directory")
    p.add_argument(
        "--backend",
        choices=("memory", "open_clip"),
        default="memory",
        help="memory: our in-memory loop (small data); open_clip: open_clip_train under torchrun",
    )
    options.add_train_options(p)
    g = p.add_argument_group("open_clip backend")
    g.add_argument(
        "--train-num-samples", type=int, help="samples per epoch over all --data (needed for shards)"
    )
    g.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs); --batch-size is split")
    g.add_argument(
        "--workers",
        type=int,
        help="data-loader workers per process (default: this machine's cores over --nproc-per-node, "
        "at most 8; set it for another machine with --dry-run); 0 loads the data in the training "
        "process itself, as open_clip_train does with --workers 0 (slower, but no worker processes)",
    )
    g.add_argument("--logs", help="open_clip_train's log directory (default: beside --out, logs/)")
    g.add_argument("--name", help="open_clip_train's experiment name (default: the name of --out)")
    g.add_argument("--open-clip-args", help="more open_clip_train options, as one quoted string")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact torchrun command and stop (for GPUs unless --device cpu)",
    )
    g.add_argument("--slurm-partition", help="submit to this SLURM partition (submitit), one node")
    g.add_argument("--slurm-timeout-min", type=int, default=24 * 60, help="SLURM time limit in minutes")
    p.add_argument(
        "--init-checkpoint",
        help="start from this checkpoint instead of a fresh model (fine-tuning); it must have the "
        "architecture of --model / the preset's model",
    )
    p.add_argument("--pretrained", help=options.PRETRAINED_HELP + " (fine-tuning; both backends)")
    p.add_argument(
        "--track-loss-epochs",
        type=int,
        help="record each sample's loss averaged over the first E epochs in OUT/sample_losses.json "
        "(for poisonclip detect's loss-tracking detector)",
    )
    options.add_csv_options(p)
    options.add_no_progress(p, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train on the union of the given datasets (e.g. train.csv and poisons.csv, or shards and
    poison shards) and save a safetensors checkpoint that open_clip.create_model('local-dir:OUT')
    and poisonclip evaluate load."""
    from poisonclip.data.reading import read_datasets
    from poisonclip.detect.loss_tracking import LOSS_RECORD_NAME, LossTracker, save_loss_record
    from poisonclip.train.fit import train_model
    from poisonclip.train.launch import pretrained_elsewhere
    from poisonclip.train.loop import check_device
    from poisonclip.train.model import check_pretrained, get_model_config, image_size_of, resolve_pretrained

    config = options.train_config(args)
    image_size = image_size_of(get_model_config(config.model))  # validates the model name early
    elsewhere = args.dry_run and pretrained_elsewhere(config.model, config.pretrained)  # passed on unchecked
    runs_elsewhere = args.dry_run or args.slurm_partition
    if config.pretrained and not elsewhere:  # before any data is read
        if runs_elsewhere:  # loaded where the command runs
            check_pretrained(config.model, config.pretrained)
        else:  # a tag's weights are downloaded now, before any other work (cached for the run)
            resolve_pretrained(config.model, config.pretrained)
    if config.pretrained and args.lr is None and config.lr > FINETUNE_LR_NOTE_ABOVE:
        print(
            f"poisonclip: note: --pretrained starts from trained weights, but lr {config.lr:g} is the "
            f"from-scratch rate of preset {args.preset!r}; fine-tuning a CLIP usually takes ~1e-5 (--lr)",
            file=sys.stderr,
        )
    note_resized(args, args.data, image_size, "it is")
    if not runs_elsewhere:  # trains here: the device must exist
        check_device(config.device)
    if args.backend == "open_clip":
        if args.init_checkpoint or args.track_loss_epochs:
            raise UsageError("--init-checkpoint and --track-loss-epochs need --backend memory")
        _train_open_clip(config, args)
        return 0
    if runs_elsewhere:
        raise UsageError("--dry-run and --slurm-partition need --backend open_clip")
    if args.track_loss_epochs is not None and not 1 <= args.track_loss_epochs <= config.epochs:
        raise UsageError(f"--track-loss-epochs must be between 1 and the {config.epochs} training epochs")
    dataset = read_datasets(args.data, image_size, options.csv_format(args), options.progress(args))
    tracker = (
        LossTracker(len(dataset), args.track_loss_epochs, config.batch_size, config.seed)
        if args.track_loss_epochs
        else None
    )
    _, _, stats = train_model(
        dataset,
        config,
        args.out,
        options.progress(args),
        init_checkpoint=args.init_checkpoint,
        on_epoch_end=tracker,
    )
    if tracker is not None:
        save_loss_record(Path(args.out) / LOSS_RECORD_NAME, dataset.keys, tracker.mean(), tracker.epochs)
    print(
        f"trained {stats.steps} steps ({stats.samples_per_second:,.0f} samples/s, "
        f"final loss {stats.final_loss:.3f}); checkpoint in {args.out}"
    )
    return 0


def _train_open_clip(config: TrainConfig, args: argparse.Namespace) -> None:
    from poisonclip.train.launch import dry_run_command, open_clip_run
    from poisonclip.train.open_clip_backend import run_open_clip, submit_slurm

    run = open_clip_run(
        args.data,
        args.out,
        train_num_samples=args.train_num_samples,
        nproc_per_node=args.nproc_per_node,
        workers=args.workers,
        logs=args.logs,
        name=args.name,
        csv=options.csv_format(args),
        extra_args=args.open_clip_args,
    )
    if args.dry_run:  # a command to run elsewhere
        print(dry_run_command(config, run))
    elif args.slurm_partition:
        job = submit_slurm(config, run, args.out, args.slurm_partition, args.slurm_timeout_min)
        print(f"submitted SLURM job {job.job_id}; logs in {run.experiment_dir}, checkpoint to {args.out}")
    else:
        out = run_open_clip(config, run, args.out)
        print(f"open_clip_train finished; checkpoint converted to {out}")


def note_resized(args: argparse.Namespace, sources: Sequence[str], model_size: int, what: str) -> None:
    """The trigger-resolution rule (``poisonclip.data.resolution``): refuse poison sets stored at
    another size than the model's input; note on stderr each source that gets resized to it."""
    from poisonclip.data.resolution import check_poison_resolution

    for source, (width, height) in check_poison_resolution(
        sources, model_size, args.csv_separator, args.image_column
    ):
        print(
            f"poisonclip: note: {source} is stored at {width}x{height}; {what} resized to the "
            f"model's {model_size}x{model_size} input",
            file=sys.stderr,
        )
