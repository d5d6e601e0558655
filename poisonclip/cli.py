"""The ``poisonclip`` command line. It only parses, validates and calls the library.

Every subcommand is ``main([...])``-callable from tests. Bad input (a ``UsageError``, or an
argparse error) prints one line and exits with code 2; outputs are written atomically, so a
failed command leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from poisonclip.errors import UsageError

EXIT_USAGE = 2


PRETRAINED_HELP = (
    "start from these weights of --model: an open_clip pretrained tag (open_clip downloads it, e.g. "
    "--model ViT-B-32 --pretrained laion2b_s34b_b79k) or a local file (open_clip_train's epoch_N.pt, a "
    "state dict .pt/.bin, .safetensors; loaded weights-only)"
)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults come from --preset)")
    g.add_argument("--preset", default="demo", help="named preset (demo, paper, tiny) or a JSON file")
    g.add_argument("--model", help="model config: ours (poisonclip list models), open_clip name, or JSON")
    g.add_argument("--epochs", type=int, help="passes over the training set")
    g.add_argument("--batch-size", type=int, help="global batch size (last partial batch dropped)")
    g.add_argument("--lr", type=float, help="peak learning rate after warm-up")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay (not on gains/biases)")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), help="AdamW, or momentum SGD (paper)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--warmup-fraction", type=float, help="fraction of steps of linear warm-up")
    g.add_argument("--train-seed", type=int, help="model initialisation and data order")
    g.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CUDA, fp32 on CPU",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the forward pass and loss (meant for long runs on GPUs, not timed here; "
        "the first steps pay for compiling)",
    )
    g.add_argument(
        "--data-on-device",
        action=argparse.BooleanOptionalAction,
        help="copy the whole (uint8) training set to the device once (default), or keep it in CPU "
        "memory and copy each batch from pinned memory (--no-data-on-device, for sets larger than "
        "the GPU's memory)",
    )


def _train_config(args: argparse.Namespace):
    from poisonclip.train.config import load_preset

    return load_preset(args.preset).replace(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        momentum=args.momentum,
        warmup_fraction=args.warmup_fraction,
        seed=args.train_seed,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        data_on_device=args.data_on_device,
        pretrained=getattr(args, "pretrained", None),
    )


def _add_overwrite(p: argparse.ArgumentParser, **outputs: bool) -> None:
    """Declare the command's outputs (option dest -> written as a directory?) and ``--overwrite``.

    ``main`` checks every declared output before the command runs (``check_output``)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output; of directories only a previous poisonclip output (a file "
        "output: any file), never one holding an input of this command, the working directory or "
        "the home directory",
    )
    p.set_defaults(outputs=outputs)


def _add_local_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="local processes (default: one single-thread worker a core)")
    p.add_argument("--data-root", help="synthetic-data cache (default: data/ beside the database)")


def _add_poison_output_options(p: argparse.ArgumentParser, resized: str) -> None:
    p.add_argument("--out", required=True, help="output directory for the poison set")
    _add_overwrite(p, out=True, merged_csv=False)
    p.add_argument(
        "--format",
        choices=("csv", "wds"),
        help="poisons.csv + PNGs, or webdataset shards to join as 'original::poisons' "
        "(default: wds for shard input, csv for CSV input)",
    )
    p.add_argument("--merged-csv", help="with a CSV: also write one CSV of the data and the poisons here")
    p.add_argument(
        "--image-size",
        type=int,
        help=f"resize and centre-crop {resized} to this: the model's input size, so that the poisons "
        "reach the model as written (default: as they are)",
    )
    p.add_argument("--samples-per-shard", type=int, default=10_000, help="with --format wds")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png", help="with --format wds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_patch_options(
    p: argparse.ArgumentParser,
    label_default: str | None = None,
    label_help: str = "the label the trigger should cause: a class name of your data, which the poisons' "
    "captions are searched for (required)",
    label_required: bool = False,
    trigger_from: bool = False,
) -> None:
    from poisonclip.attacks.triggers.options import add_trigger_options

    p.add_argument("--target-label", default=label_default, required=label_required, help=label_help)
    add_trigger_options(p, from_poison_set=trigger_from)


def _add_csv_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv-separator", default="\t", help="CSV separator (open_clip default: tab)")
    p.add_argument("--image-column", default="filepath", help="CSV column with image paths")
    p.add_argument("--caption-column", default="title", help="CSV column with captions")
    p.add_argument(
        "--label-column",
        default="label",
        help="CSV column (or shard JSON field) with each sample's class, as an index or a class "
        "name; read by evaluation splits only (poisoning and training ignore labels)",
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from poisonclip.attacks.triggers.options import trigger_from_args
    from poisonclip.data.synthetic import SyntheticConfig
    from poisonclip.experiments.demo import DemoConfig, format_table, run_demo
    from poisonclip.train.loop import check_device

    config = DemoConfig(
        data=SyntheticConfig(num_train=args.num_train, seed=args.data_seed),
        train=_train_config(args),
        target_label=args.target_label,
        poison_count=args.poison_count,
        trigger=trigger_from_args(args),
        eval_placement=args.eval_placement,
        seed=args.seed,
    )
    check_device(config.train.device)
    summary = run_demo(config, args.out, progress=not args.no_progress)
    print(format_table(summary))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'similarity_histograms.png'}")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from poisonclip.data.synthetic import SyntheticConfig, write_synthetic

    config = SyntheticConfig(
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        num_shapes=args.num_shapes,
        seed=args.seed,
        stored_size=args.stored_size,
    )
    root = write_synthetic(args.out, config)
    print(f"wrote {config.num_train} train / {config.num_test} test pairs to {root}")


def _read_data(
    path: str,
    args: argparse.Namespace,
    image_size: int | None = None,
    labelled: bool = False,
    classnames: list[str] | None = None,
    classnames_source: str = "",
):
    """A CSV or webdataset shards, decoded into memory.

    Labels are read only when ``labelled`` (evaluation splits): poisoning and training never need
    them, so a label column they could not parse must not stop them. Labels are class indices or
    class names, mapped through ``classnames`` (read from ``classnames_source``) when given.
    """
    from poisonclip.data.dataset import read_csv_dataset
    from poisonclip.data.wds import is_shard_url, read_shard_dataset

    progress, label_column = not getattr(args, "no_progress", False), args.label_column if labelled else None
    if is_shard_url(path):
        return read_shard_dataset(
            path, image_size, progress=progress, label_key=label_column, classnames=classnames,
            classnames_source=classnames_source,
        )  # fmt: skip
    return read_csv_dataset(
        path,
        image_size=image_size,
        sep=args.csv_separator,
        image_column=args.image_column,
        caption_column=args.caption_column,
        label_column=label_column,
        progress=progress,
        classnames=classnames,
        classnames_source=classnames_source,
    )


def _print_faults(faults: Sequence[tuple[str, str]], limit: int = 20) -> None:
    """The run summary's list of skipped samples and shards (the readers never fail on them)."""
    if not faults:
        return
    print(f"skipped {len(faults)} faulty samples or shards:")
    for key, reason in faults[:limit]:
        print(f"  {key}: {reason}")
    if len(faults) > limit:
        print(f"  ... and {len(faults) - limit} more")


def _poison_output_format(args: argparse.Namespace) -> tuple[bool, str]:
    """(is --data shards?, output format), after checking that the two fit together."""
    from poisonclip.data.wds import is_shard_url

    shards = is_shard_url(args.data)
    output_format = args.format or ("wds" if shards else "csv")
    if output_format == "wds" and not shards:
        raise UsageError("--format wds needs shards as --data: open_clip_train cannot join a CSV and shards")
    if args.merged_csv and (shards or output_format != "csv"):
        raise UsageError("--merged-csv needs a CSV as --data and --format csv")
    return shards, output_format


def _print_scan(scan, label: str) -> None:
    print(
        f"scanned {len(scan):,} captions in {scan.seconds:.1f} s ({scan.captions_per_second:,.0f} "
        f"captions/s, {scan.parquet_shards} of {len(scan.urls)} shards from parquet, no image "
        f"decoded but the chosen ones); {len(scan.matches):,} contain {label!r}"
    )


def _write_poisons(
    args: argparse.Namespace, poisons, output_format: str, num_clean: int, what: str, scan=None
) -> None:
    """Write the poison set as --format says and print how to train on it (``scan``: the shards'
    caption scan, whose missing shards the commands leave out)."""
    import shlex

    from poisonclip.attacks.poison_set import (
        POISON_CSV_NAME,
        write_merged_csv,
        write_poison_set,
        write_poison_shards,
    )
    from poisonclip.data.wds import shard_ranges

    rate = len(poisons) / (num_clean + len(poisons))
    total = num_clean + len(poisons)
    if output_format == "wds":
        written = write_poison_shards(args.out, poisons, args.samples_per_shard, args.image_format)
        print(f"wrote {len(poisons)} poisons ({rate:.3%} of the poisoned set){what} to {args.out}")
        # Only the shards that exist: a missing one in --data's brace range was already reported.
        data = shard_ranges([url for url in scan.urls if Path(url).is_file()]) + [written.url]
        joined = " ".join(shlex.quote(d) for d in data)
        print(
            f"train with: poisonclip train --data {joined} --out CHECKPOINT "
            f"(at scale: --backend open_clip --train-num-samples {total})"
        )
        print(f"or open_clip_train: --train-data {shlex.quote('::'.join(data))} --train-num-samples {total}")
        return
    out = write_poison_set(args.out, poisons)
    print(f"wrote {len(poisons)} poisons ({rate:.3%} of the poisoned set){what} to {out}")
    data = [args.merged_csv] if args.merged_csv else [args.data, str(Path(out) / POISON_CSV_NAME)]
    print(f"train with: poisonclip train --data {' '.join(shlex.quote(d) for d in data)} --out CHECKPOINT")
    if args.merged_csv:
        rows = write_merged_csv(
            args.merged_csv, args.data, out, args.csv_separator, args.image_column, args.caption_column
        )
        print(f"wrote {rows} rows (data, then poisons) to {args.merged_csv}")


def cmd_poison_backdoor(args: argparse.Namespace) -> None:
    from poisonclip.attacks.backdoor import make_backdoor, make_backdoor_from_shards
    from poisonclip.attacks.triggers.options import trigger_from_args

    shards, output_format = _poison_output_format(args)
    attack = {
        "target_label": args.target_label,
        "poison_count": args.poison_count,
        "trigger": trigger_from_args(args),
        "seed": args.seed,
        "word_boundary": not args.substring,
    }
    if shards:
        poisons, scan = make_backdoor_from_shards(
            args.data, **attack, image_size=args.image_size, progress=not args.no_progress
        )
        num_clean, faults = len(scan), scan.skipped + poisons.samples.skipped
        _print_scan(scan, args.target_label)
    else:
        dataset = _read_data(args.data, args, args.image_size)
        poisons, scan = make_backdoor(dataset, **attack), None
        num_clean, faults = len(dataset), dataset.skipped
    if args.image_size is None:  # the trigger-resolution rule (poisonclip.data.resolution)
        _warn_poison_size(args, poisons.samples.images.shape[-1])
    _write_poisons(args, poisons, output_format, num_clean, "", scan)
    _print_faults(faults)


def _warn_poison_size(args: argparse.Namespace, size: int) -> None:
    """Poisons written at the data's size: a warning unless that is known to be the model's input
    size (a ``data synth`` set stored at its ``image_size``)."""
    model_size = _synthetic_model_size(args.data)  # None: the model's input size is unknown here
    if model_size != size:
        made_for = f", but the data was made for a {model_size}x{model_size} model" if model_size else ""
        print(
            f"poisonclip: warning: no --image-size: the poisons keep the data's {size}x{size} pixels "
            f"and the trigger is in those pixels{made_for}. A model with "
            "another input size would see it resized (a 1-pixel checkerboard turns grey): pass "
            f"--image-size with the model's input size{f' ({model_size})' if model_size else ''} "
            "(poisonclip train refuses poisons that do not match its model)",
            file=sys.stderr,
        )


def _synthetic_model_size(source: str) -> int | None:
    """The model input size that ``data synth`` made ``source``'s set for (``image_size`` in the
    ``config.json`` beside it; the images may be stored at another ``stored_size``), else None."""
    from poisonclip.data.synthetic import SyntheticConfig

    folder = Path(os.path.dirname(source.split("::")[0].split("{")[0]))  # a CSV's or shards' folder
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no such file (not a synthetic set), or not ours
        return None
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if not isinstance(config, dict) or not {"image_size", "num_shapes"} <= set(config) <= fields:
        return None
    size = config["image_size"]
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _target_from_args(args: argparse.Namespace, image_size: int | None):
    """x′ from --target-image, or row --target-index of --target-split (with its class, if labelled)."""
    import torch

    from poisonclip.attacks.targeted import Target
    from poisonclip.data.dataset import load_image, read_classnames

    if args.target_image is not None:
        try:
            array = load_image(Path(args.target_image), image_size)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
            raise UsageError(f"cannot read target image {args.target_image}: {err}") from err
        image = torch.tensor(array).permute(2, 0, 1).contiguous()  # copies PIL's read-only array
        return Target(image, args.target_label, args.target_image)
    if args.target_split is None:
        raise UsageError("--target-index needs --target-split")
    classnames_file = Path(args.classnames or Path(args.target_split).parent / "classnames.txt")
    # --classnames is read strictly; the file beside the split only if it is there
    classnames = read_classnames(classnames_file) if args.classnames or classnames_file.is_file() else None
    split = _read_data(args.target_split, args, image_size, True, classnames, str(classnames_file))
    index = args.target_index
    if not 0 <= index < len(split):
        raise UsageError(f"--target-index {index} is outside the {len(split)} samples of {args.target_split}")
    true_label = None
    if (label := int(split.labels[index])) >= 0:
        if split.classnames is None:  # labels are indices, and no file names them
            raise UsageError(f"{args.target_split} is labelled: pass --classnames to name its classes")
        true_label = split.classnames[label]
    return Target(split.images[index], args.target_label, split.keys[index], index, true_label)


def cmd_poison_targeted(args: argparse.Namespace) -> None:
    from collections import Counter

    from poisonclip.attacks.targeted import make_targeted, make_targeted_from_shards

    shards, output_format = _poison_output_format(args)
    attack = {
        "poison_count": args.poison_count,
        "captions": args.captions,
        "seed": args.seed,
        "noise_std": args.noise_std,
        "perturb_captions": args.perturb_captions,
        "word_boundary": not args.substring,
        "template_set": args.templates,
    }
    if shards:
        target = _target_from_args(args, args.image_size)
        poisons, scan = make_targeted_from_shards(
            args.data, target, **attack, image_size=args.image_size, progress=not args.no_progress
        )
        num_clean, faults = len(scan), scan.skipped + poisons.samples.skipped
        _print_scan(scan, target.label)
    else:
        dataset = _read_data(args.data, args, args.image_size)
        target = _target_from_args(args, dataset.images.shape[-1])
        poisons, scan = make_targeted(dataset, target, **attack), None
        num_clean, faults = len(dataset), dataset.skipped
    sources = Counter(row["caption_source"] for row in poisons.manifest)
    psnrs = [row["psnr_db"] for row in poisons.manifest if row["psnr_db"] is not None]
    noise = f"min PSNR {min(psnrs):.1f} dB" if psnrs else "exact copies"
    what = (
        f" of {target.key} as {target.label!r} (captions: "
        + ", ".join(f"{n} {source}" for source, n in sorted(sources.items()))
        + f"; {noise})"
    )
    _write_poisons(args, poisons, output_format, num_clean, what, scan)
    _print_faults(faults)


def _train_open_clip(config, args: argparse.Namespace) -> None:
    import shlex

    from poisonclip.train.open_clip_backend import (
        OpenClipRun,
        build_command,
        default_workers,
        format_command,
        join_train_data,
        run_open_clip,
        submit_slurm,
    )

    run = OpenClipRun(
        train_data=join_train_data(args.data),
        train_num_samples=args.train_num_samples,
        nproc_per_node=args.nproc_per_node,
        workers=args.workers if args.workers is not None else default_workers(args.nproc_per_node),
        logs=args.logs or str(Path(args.out).parent / "logs"),
        name=args.name or Path(args.out).name,
        csv_separator=args.csv_separator,
        csv_image_column=args.image_column,
        csv_caption_column=args.caption_column,
        extra_args=tuple(shlex.split(args.open_clip_args or "")),
    )
    if args.dry_run:  # a command to run elsewhere: assume GPUs there (auto precision = bf16)
        cuda = config.device != "cpu"
        if _pretrained_elsewhere(args, config):  # not checked here: passed on as it is
            command = build_command(dataclasses.replace(config, pretrained=None), run, cuda=cuda)
            at = command.index("--precision") + 2
            command[at:at] = ["--pretrained", config.pretrained]
        else:
            command = build_command(config, run, cuda=cuda)
        print(format_command(command))
    elif args.slurm_partition:
        job = submit_slurm(config, run, args.out, args.slurm_partition, args.slurm_timeout_min)
        print(f"submitted SLURM job {job.job_id}; logs in {run.experiment_dir}, checkpoint to {args.out}")
    else:
        out = run_open_clip(config, run, args.out)
        print(f"open_clip_train finished; checkpoint converted to {out}")


def _check_resolution(args: argparse.Namespace, sources: Sequence[str], model_size: int, what: str) -> None:
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


def _pretrained_elsewhere(args: argparse.Namespace, config) -> bool:
    """Whether ``--dry-run``'s ``--pretrained`` names a file of the machine the printed command is
    for (a path that is not here, and not an open_clip tag of the model): it is not checked here."""
    import open_clip

    value = config.pretrained
    if not (args.dry_run and value) or Path(value).exists():
        return False
    looks_like_path = "/" in value or os.sep in value or Path(value).suffix.lower() in PRETRAINED_SUFFIXES
    return looks_like_path and not open_clip.get_pretrained_cfg(config.model, value)


# Weights files that --dry-run takes as another machine's when they are not here.
PRETRAINED_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def cmd_train(args: argparse.Namespace) -> None:
    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.detect.loss_tracking import LOSS_RECORD_NAME, LossTracker, save_loss_record
    from poisonclip.experiments.trial import train_model
    from poisonclip.train.loop import check_device
    from poisonclip.train.model import check_pretrained, get_model_config, image_size_of, resolve_pretrained

    config = _train_config(args)
    image_size = image_size_of(get_model_config(config.model))  # validates the model name early
    if config.pretrained and not _pretrained_elsewhere(args, config):  # before any data is read
        if args.dry_run or args.slurm_partition:  # loaded where the command runs
            check_pretrained(config.model, config.pretrained)
        else:  # a tag's weights are downloaded now, before any other work (cached for the run)
            resolve_pretrained(config.model, config.pretrained)
    _check_resolution(args, args.data, image_size, "it is")
    if not (args.dry_run or args.slurm_partition):  # trains here: the device must exist
        check_device(config.device)
    if args.backend == "open_clip":
        if args.init_checkpoint or args.track_loss_epochs:
            raise UsageError("--init-checkpoint and --track-loss-epochs need --backend memory")
        _train_open_clip(config, args)
        return
    if args.dry_run or args.slurm_partition:
        raise UsageError("--dry-run and --slurm-partition need --backend open_clip")
    if args.track_loss_epochs is not None and not 1 <= args.track_loss_epochs <= config.epochs:
        raise UsageError(f"--track-loss-epochs must be between 1 and the {config.epochs} training epochs")
    dataset = ImageTextDataset.concat([_read_data(path, args, image_size) for path in args.data])
    tracker = (
        LossTracker(len(dataset), args.track_loss_epochs, config.batch_size, config.seed)
        if args.track_loss_epochs
        else None
    )
    _, _, stats = train_model(
        dataset,
        config,
        args.out,
        not args.no_progress,
        init_checkpoint=args.init_checkpoint,
        on_epoch_end=tracker,
    )
    if tracker is not None:
        save_loss_record(Path(args.out) / LOSS_RECORD_NAME, dataset.keys, tracker.mean(), tracker.epochs)
    print(
        f"trained {stats.steps} steps ({stats.samples_per_second:,.0f} samples/s, "
        f"final loss {stats.final_loss:.3f}); checkpoint in {args.out}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from poisonclip.attacks.triggers.options import trigger_from_args
    from poisonclip.data.dataset import read_classnames
    from poisonclip.evaluate.suite import evaluate_backdoor, evaluate_clean
    from poisonclip.evaluate.zeroshot import resolve_templates
    from poisonclip.train.checkpoint import load_checkpoint
    from poisonclip.train.model import context_length_of, image_size_of

    if args.target_image:
        if args.probe_train:
            raise UsageError("--target-image fits its probe on half of the test set; drop --probe-train")
        if args.target_label is None:
            raise UsageError("--target-image needs --target-label: the label y' the attack wanted for x'")
    templates = resolve_templates(args.templates)  # a bad prompt file fails before any work
    trigger = trigger_from_args(args)  # so does a bad trigger
    model, model_config = load_checkpoint(args.checkpoint)
    image_size, progress = image_size_of(model_config), not args.no_progress
    if args.imagefolder:
        from poisonclip.data.imagefolder import class_directories, read_imagefolder, resolve_classnames

        classnames = resolve_classnames(args.classnames, class_directories(args.imagefolder))
        test = read_imagefolder(args.imagefolder, image_size, args.max_per_class, progress)
    else:
        _check_resolution(args, [args.test], image_size, "its images are")
        names = read_classnames(args.classnames) if args.classnames else None
        test = _read_data(args.test, args, image_size, True, names, str(args.classnames))
        if test.classnames is None:
            raise UsageError(
                f"{args.test}: its labels are class indices (or absent): pass --classnames to name "
                "them (one name per line, in label order)"
            )
        classnames = test.classnames
    if args.target_image:
        _print_metrics(args, _evaluate_target(args, model, model_config, test, classnames, templates))
        return
    if args.target_label is None:  # no backdoor named: the clean metrics only
        evaluation = evaluate_clean(model, test, classnames, templates, context_length_of(model_config))
        patched, target = None, None
    else:
        evaluation = evaluate_backdoor(
            model,
            test,
            classnames,
            args.target_label,
            trigger,
            seed=args.seed,
            templates=templates,
            context_length=context_length_of(model_config),
        )
        patched, target = evaluation.patched_features, evaluation.target
    if args.probe_train:
        from poisonclip.data.imagefolder import read_imagefolder
        from poisonclip.evaluate.embeddings import encode_images
        from poisonclip.evaluate.linear_probe import probe_backdoor_metrics

        fit = read_imagefolder(args.probe_train, image_size, args.max_per_class, progress)
        features = evaluation.features if target is None else evaluation.test_features
        evaluation.metrics.update(
            probe_backdoor_metrics(
                encode_images(model, fit.images),
                fit.labels,
                features,
                test.labels,
                patched,
                target,
                len(classnames),
            )
        )
    _print_metrics(args, evaluation.metrics)


def _evaluate_target(
    args: argparse.Namespace, model, model_config: dict, test, classnames, templates: Sequence[str]
) -> dict:
    """The targeted attack's metrics for x′ = --target-image and y′ = --target-label."""
    from poisonclip.attacks.dedup import image_hash
    from poisonclip.evaluate.targeted_suite import evaluate_targeted
    from poisonclip.train.model import context_length_of, image_size_of

    target = _target_from_args(args, image_size_of(model_config))
    # x′ taken from the test set itself must neither fit the probe nor count as a clean image.
    digest = image_hash(target.image)
    others = [i for i in range(len(test)) if image_hash(test.images[i]) != digest]
    evaluation = evaluate_targeted(
        model, [target], test.subset(others), classnames, templates, context_length_of(model_config)
    )
    row = evaluation.per_target[0]
    return {
        **{k: v for k, v in evaluation.metrics.items() if k != "num_targets"},
        "target_copies_left_out_of_test": len(test) - len(others),
        **{k: row[k] for k in ("target_key", "target_label", "zero_shot_rank", "probe_rank")},
        "zero_shot_success": row["zero_shot_success"],
        "probe_success": row["probe_success"],
    }


def _print_metrics(args: argparse.Namespace, metrics: dict) -> None:
    from poisonclip.data.io import write_json_atomic

    if args.out:
        write_json_atomic(args.out, metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))


def _read_training_set(args: argparse.Namespace, image_size: int):
    """The training set as trained on (``--data``, in order), and poison labels from ``--manifest``."""
    from poisonclip.attacks.poison_set import read_manifest
    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.detect.scoring import poison_labels

    dataset = ImageTextDataset.concat([_read_data(path, args, image_size) for path in args.data])
    if len(set(dataset.keys)) != len(dataset):
        duplicate = next(k for i, k in enumerate(dataset.keys) if k in dataset.keys[:i])
        raise UsageError(f"sample key {duplicate!r} appears twice in --data; keys must identify samples")
    if not args.manifest:
        return dataset, None, None
    for path in args.manifest:
        if not Path(path).is_file():
            raise UsageError(f"manifest not found: {path}")
    manifest = [row for path in args.manifest for row in read_manifest(path)]
    labels = poison_labels(dataset.keys, manifest)
    if not labels.any():
        raise UsageError(
            "no sample of --data is listed in --manifest (pass the poison set's poisons.csv too)"
        )
    return dataset, labels, manifest


def _detector_settings(names: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Each detector with the neighbour count, space and reference set it takes (``--lid-k`` for LID)."""
    from poisonclip.detect import detector_params

    settings = {}
    for name in names:
        accepted, params = detector_params(name), {}
        k = args.lid_k if name == "lid" else args.k
        if "k" in accepted and k is not None:
            params["k"] = k
        if "space" in accepted:
            params["space"] = args.space
        if "reference" in accepted:
            params["reference"] = args.reference
        if "normalize" in accepted:  # Huang et al.'s batch protocol: raw features; the all-pairs
            params["normalize"] = args.reference == "all"  # variant as measured before: unit norm
        if "batch_size" in accepted:
            params.update(batch_size=args.reference_batch_size, reshuffles=args.reshuffles)
        settings[name] = params
    return settings


def cmd_detect(args: argparse.Namespace) -> None:
    from poisonclip.detect import (
        embed_training_set,
        get_detector,
        list_detectors,
        load_loss_record,
        run_detectors,
        write_detection,
    )
    from poisonclip.detect.loss_tracking import LOSS_RECORD_NAME
    from poisonclip.train.checkpoint import load_checkpoint
    from poisonclip.train.model import image_size_of

    names = args.detectors.split(",") if args.detectors else list_detectors()
    for name in names:
        get_detector(name)  # an unknown name fails before any work
    record = Path(args.loss_record) if args.loss_record else Path(args.checkpoint) / LOSS_RECORD_NAME
    if not args.detectors and not record.is_file():
        names.remove("loss-tracking")
        print(f"no loss record ({record}): loss-tracking skipped (train with --track-loss-epochs)")
    model, model_config = load_checkpoint(args.checkpoint)
    dataset, labels, _ = _read_training_set(args, image_size_of(model_config))
    early_loss = load_loss_record(record, dataset.keys) if "loss-tracking" in names else None
    inputs = embed_training_set(model, dataset, model_config, early_loss)
    detection = run_detectors(inputs, _detector_settings(names, args), labels, args.seed)
    meta = {"checkpoint": str(args.checkpoint), "data": args.data, "manifest": args.manifest}
    write_detection(args.out, dataset.keys, detection, labels, meta=meta)
    for name in names:
        line = f"{name:>17}: {detection.seconds[name]:6.2f} s"
        if labels is not None:
            m = detection.metrics[name]
            line += f"  ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}"
            line += (
                f"  FPR@95%recall {m['fpr_at_95_recall']:.3f}  shuffled ROC-AUC {m['roc_auc_shuffled']:.3f}"
            )
        print(line)
    if labels is not None:
        rate = labels.double().mean()
        print(f"{int(labels.sum())} poisons among {len(labels)} pairs (PR-AUC chance level: {rate:.4f})")
    print(f"wrote {Path(args.out) / 'scores.tsv'} and {Path(args.out) / 'metrics.json'}")


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


def _defense_params(defense, args: argparse.Namespace):
    """The defense's parameter dataclass from the options given; options of other defenses are refused."""
    fields = {f.name for f in dataclasses.fields(defense.params)}
    given = {dest: getattr(args, dest) for dest in DEFENSE_OPTIONS if getattr(args, dest) is not None}
    if foreign := sorted(
        f"--{dest.replace('_', '-')}" for dest in given if DEFENSE_OPTIONS[dest] not in fields
    ):
        raise UsageError(f"{', '.join(foreign)} do(es) not apply to defense {defense.name}")
    values = {DEFENSE_OPTIONS[dest]: value for dest, value in given.items()}
    if "lrs" in values:
        values["lrs"] = tuple(values["lrs"])
    return defense.params(**values)


def cmd_defend(args: argparse.Namespace) -> None:
    from poisonclip.data.dataset import ImageTextDataset
    from poisonclip.defend import DefenseContext, get_defense
    from poisonclip.defend.output import CHECKPOINT_DIR, RECORD_NAME, write_defense
    from poisonclip.train.checkpoint import load_checkpoint_as
    from poisonclip.train.loop import check_device
    from poisonclip.train.model import get_model_config, image_size_of, initial_model, resolve_pretrained

    defense = get_defense(args.defense)
    params = _defense_params(defense, args)
    config = _train_config(args)
    check_device(config.device)
    if args.pretrained and (defense.name != "cleanclip" or args.checkpoint):
        raise UsageError("--pretrained names the model that cleanclip cleans, instead of --checkpoint")
    given = {"model": args.checkpoint or args.pretrained, "dataset": args.data, "clean": args.clean_data}
    flags = {"model": "--checkpoint (or --pretrained)", "dataset": "--data", "clean": "--clean-data"}
    if missing := [flags[need] for need in defense.needs if not given[need]]:
        raise UsageError(f"defense {defense.name} needs {' and '.join(missing)}")
    if unused := [flags[k] for k, v in given.items() if v and k not in defense.needs]:
        raise UsageError(f"defense {defense.name} does not use {' or '.join(unused)}")
    if args.manifest and not args.data:
        raise UsageError("--manifest labels the samples of --data, which this defense does not use")
    model_config = get_model_config(config.model)
    if args.pretrained:  # a tag's weights are downloaded now, before any other work
        resolve_pretrained(config.model, args.pretrained)
    model = load_checkpoint_as(args.checkpoint, model_config) if args.checkpoint else None
    if args.pretrained:
        model = initial_model(config, model_config).eval()
    image_size = image_size_of(model_config)
    dataset, labels, manifest = _read_training_set(args, image_size) if args.data else (None, None, None)
    clean = None
    if args.clean_data:
        clean = ImageTextDataset.concat([_read_data(path, args, image_size) for path in args.clean_data])
    context = DefenseContext(config, dataset, model, clean, progress=not args.no_progress)
    outcome = defense.run(context, params)
    keys = dataset.keys if dataset is not None else None
    write_defense(args.out, defense.name, params, outcome, model_config, config, keys, manifest)
    print(
        f"{defense.name}: {outcome.seconds:.1f} s; defended checkpoint in {Path(args.out) / CHECKPOINT_DIR}"
    )
    print(f"record in {Path(args.out) / RECORD_NAME}; evaluate with: poisonclip evaluate --checkpoint "
          f"{Path(args.out) / CHECKPOINT_DIR} ...")  # fmt: skip


def cmd_list(args: argparse.Namespace) -> None:
    from poisonclip.attacks import list_attacks, list_triggers
    from poisonclip.defend import list_defenses
    from poisonclip.detect import list_detectors
    from poisonclip.train import list_model_configs, list_presets

    listing = {
        "models": list_model_configs,
        "presets": list_presets,
        "attacks": list_attacks,
        "triggers": list_triggers,
        "detectors": list_detectors,
        "defenses": list_defenses,
    }
    print("\n".join(listing[args.what]()))


DEFAULT_DB = "results/sweeps.sqlite"
EXPERIMENTS_DIR = "experiments"  # the shipped experiment files, relative to the repository root


def _local_executor(args: argparse.Namespace, sweep):
    from poisonclip.experiments.sweep import LocalExecutor
    from poisonclip.train.loop import check_device

    for cell in sweep.cells:  # trials run here: a device this host lacks fails now, not in each trial
        check_device(cell.train.device)
    return LocalExecutor.for_machine(args.workers)


def _slurm_executor(args: argparse.Namespace, sweep):
    from poisonclip.experiments.sweep import SubmititExecutor

    if args.workers is not None:
        raise UsageError("--workers is for the local executor; set SLURM resources in the file's [slurm]")
    return SubmititExecutor(Path(args.db).parent / "submitit", "slurm", sweep.slurm)


SWEEP_EXECUTORS = {"local": _local_executor, "slurm": _slurm_executor}


def cmd_sweep_run(args: argparse.Namespace) -> None:
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import run_sweep

    sweep = load_sweep(args.file)
    executor = SWEEP_EXECUTORS[args.executor](args, sweep)
    try:
        summary = run_sweep(
            sweep, args.db, executor, args.data_root, not args.no_progress, args.seeds_per_job
        )
    except KeyboardInterrupt:
        print("poisonclip: interrupted; finished trials are stored, rerun to complete", file=sys.stderr)
        raise SystemExit(130) from None
    print(
        f"sweep {sweep.name}: ran {summary.completed} trials, {summary.already_done} were already "
        f"stored, {summary.skipped} were run by another process, {len(summary.failed)} failed "
        f"({summary.trials} in all); results in {args.db}"
    )
    if summary.failed:
        raise SystemExit(1)


def cmd_sweep_status(args: argparse.Namespace) -> None:
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import sweep_status

    sweep = load_sweep(args.file)
    status = sweep_status(sweep, args.db)
    print(
        f"sweep {status.name} ({sweep.description or 'no description'}) in {args.db}:\n"
        f"{status.trials} trials, {status.rows_done}/{status.rows_total} result rows stored\n"
        f"done {status.done} ({status.done / status.trials:.0%})  running {status.running}  "
        f"remaining {status.remaining}"
    )


def cmd_report(args: argparse.Namespace) -> None:
    from poisonclip.data.io import atomic_path
    from poisonclip.experiments.store import ResultStore
    from poisonclip.report.document import write_report

    ResultStore(args.db, read_only=True)  # a bad database is refused before anything is written
    with atomic_path(args.out) as tmp:  # the report as one output: never half-written or mixed
        tmp.mkdir()
        summary = write_report(args.db, tmp)
    out = Path(args.out)
    print(
        f"wrote {len(summary.figures)} figures, {out / summary.markdown.name} and {out / summary.html.name}"
    )
    if summary.missing:
        print(f"no sweep in {args.db} lists: {', '.join(summary.missing)}")


def _check_figures_dir(path: Path) -> None:
    """A directory that figure files can be copied into (existing, or creatable)."""
    from poisonclip.data.io import check_creatable

    if path.exists() and not path.is_dir():
        raise UsageError(f"--figures {path}: exists and is not a directory")
    check_creatable(path / "figure.png")  # an existing directory must itself be writable


def cmd_reproduce(args: argparse.Namespace) -> None:
    from poisonclip.experiments.grid import load_sweep
    from poisonclip.experiments.sweep import run_sweep

    # The paper's figures first, then the rest (defense matrices), each group by name.
    files = args.files or sorted(
        Path(EXPERIMENTS_DIR).glob("*.toml"), key=lambda f: (f.stem[:3] != "fig", f.stem)
    )
    if not files:
        raise UsageError(
            f"no experiment files in {EXPERIMENTS_DIR}/: name them, or run from the repository root"
        )
    # Everything is checked before the first trial: files, devices, workers, README and --figures.
    sweeps = [load_sweep(f) for f in files]
    executors = [_local_executor(args, sweep) for sweep in sweeps]
    if args.readme:
        from poisonclip.report.document import check_readme

        check_readme(Path(args.readme))
    if args.figures:
        _check_figures_dir(Path(args.figures))
    failed = 0
    for sweep, executor in zip(sweeps, executors, strict=True):
        try:
            summary = run_sweep(sweep, args.db, executor, args.data_root, not args.no_progress)
        except KeyboardInterrupt:
            print("poisonclip: interrupted; finished trials are stored, rerun to complete", file=sys.stderr)
            raise SystemExit(130) from None
        failed += len(summary.failed)
        print(f"sweep {sweep.name}: trained {summary.completed}, {summary.already_done} already stored "
              f"({summary.trials} trials), {len(summary.failed)} failed")  # fmt: skip
    cmd_report(args)
    if args.figures:
        from poisonclip.report.document import publish_figures

        written = publish_figures(args.out, args.figures)
        print(f"copied {len(written)} figure files (PNG, CSV) to {args.figures}")
    if args.readme:
        from poisonclip.report.document import update_readme

        update_readme(args.readme, args.db)
        print(f"updated the paper-vs-toy table in {args.readme}")
    if failed:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poisonclip",
        description="Poison and backdoor CLIP-style models and measure the attacks "
        "(Carlini & Terzis, ICLR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="synthetic data -> clean and backdoored model -> ASR, z-score, figure",
        description="Generate the embedded synthetic dataset, poison it with a checkerboard "
        "backdoor, train a clean and a backdoored model, and compare them.",
    )
    p.add_argument("--out", default="results/demo", help="output directory")
    _add_overwrite(p, out=True)
    p.add_argument("--num-train", type=int, default=20_000, help="clean training pairs")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--poison-count", type=int, default=100, help="poisons added to the training set")
    p.add_argument("--seed", type=int, default=0, help="seed of the poison selection")
    _add_patch_options(
        p, label_default="star", label_help="the label the trigger should cause: a shape of the synthetic set"
    )
    p.add_argument(
        "--eval-placement",
        choices=("consistent", "random", "center"),
        help="where the patch goes on test images (default: the trigger's default placement)",
    )
    _add_train_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="generate datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
    q = data_sub.add_parser(
        "synth",
        help="write the synthetic shapes dataset as PNGs + open_clip CSVs",
        description="Write train.csv, test.csv (both with labels), classnames.txt and images.",
    )
    q.add_argument("out", help="output directory")
    _add_overwrite(q, out=True)
    q.add_argument("--num-train", type=int, default=20_000, help="training pairs")
    q.add_argument("--num-test", type=int, default=2_000, help="labelled test images")
    q.add_argument("--image-size", type=int, default=32, help="pixels per side")
    q.add_argument(
        "--stored-size",
        type=int,
        help="store the images at this many pixels per side instead: the same scenes and captions "
        "at another resolution than the model's (data as users have it)",
    )
    q.add_argument("--num-shapes", type=int, default=20, help="number of classes (2-20)")
    q.add_argument("--seed", type=int, default=0, help="generator seed")
    q.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("poison", help="build poison sets")
    poison_sub = p.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    q = poison_sub.add_parser(
        "backdoor",
        help="a trigger (default: the paper's checkerboard) on many images, captioned with the target label",
        description="Write poison-only data (poisons.csv + images, or webdataset shards, + "
        "manifest.jsonl) to add to the training set; the input dataset is not modified.",
    )
    q.add_argument(
        "--data",
        required=True,
        help="training CSV (open_clip format) or webdataset shards in img2dataset's layout "
        "('dir/{00000..00331}.tar'; captions are read from the parquet files, no image is decoded "
        "but the chosen ones)",
    )
    q.add_argument("--poison-count", type=int, required=True, help="number of poisons")
    q.add_argument("--seed", type=int, default=0, help="seed for image, caption and position choice")
    q.add_argument(
        "--substring",
        action="store_true",
        help="plain substring caption search (default: the label as a whole word)",
    )
    _add_poison_output_options(q, "source images")
    _add_patch_options(q, label_required=True)
    _add_csv_options(q)
    q.set_defaults(func=cmd_poison_backdoor)

    q = poison_sub.add_parser(
        "targeted",
        help="one image x' with many captions of label y' (targeted poisoning)",
        description="Write poison-only data (poisons.csv + images, or webdataset shards, + "
        "manifest.jsonl) that makes the target image x' be classified as the target label y' (paper "
        "section 3.1): copies of x', each paired with a caption for y'. The input dataset is not "
        "modified.",
    )
    q.add_argument(
        "--data",
        required=True,
        help="training CSV (open_clip format) or webdataset shards in img2dataset's layout; captions "
        "are searched (from the shards' parquet files: no image is decoded)",
    )
    _add_poison_output_options(q, "x' and the data's images")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--target-image",
        help="x' from an image file (resized and centre-cropped to the CSV's image size, or to "
        "--image-size for shards; without it x' must have the shards' size)",
    )
    which.add_argument("--target-index", type=int, help="x' as this 0-based sample of --target-split")
    q.add_argument("--target-split", help="held-out CSV that --target-index points into")
    q.add_argument(
        "--classnames",
        help="class names of --target-split's labels, to refuse an x' already of class y' "
        "(default: classnames.txt beside --target-split)",
    )
    q.add_argument("--target-label", required=True, help="the label y' that x' should get")
    q.add_argument("--poison-count", type=int, required=True, help="number of poisons (copies of x')")
    q.add_argument(
        "--captions",
        choices=("search", "templates", "both"),
        default="search",
        help="caption set: training captions containing y' (search), prompt templates formatted "
        "with y' (templates), or half of each (both); subsampled or repeated to --poison-count",
    )
    q.add_argument(
        "--templates",
        default="openai",
        help="prompt set for templates: openai (CLIP's 80, the default), synthetic (the synthetic "
        "shapes' prompts), or a file with one template per line, {} standing for y'",
    )
    q.add_argument(
        "--substring",
        action="store_true",
        help="plain substring caption search (default: the label as a whole word)",
    )
    q.add_argument(
        "--noise-std",
        type=float,
        default=1.0,
        help="dedup evasion: Gaussian pixel noise per copy, in 8-bit levels, so no two copies are "
        "identical (default 1.0: PSNR about 48 dB; 0 = exact copies)",
    )
    q.add_argument(
        "--perturb-captions",
        action="store_true",
        help="dedup evasion: synonym substitution and an inserted irrelevant word in each caption "
        "(the label is never touched)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed for caption choice, noise and perturbation")
    _add_csv_options(q)
    q.set_defaults(func=cmd_poison_targeted)

    p = sub.add_parser(
        "train",
        help="train a CLIP model in memory, or hand it to open_clip_train (torchrun, SLURM)",
        description="Train on the union of the given datasets (e.g. train.csv and poisons.csv, or "
        "shards and poison shards) and save a safetensors checkpoint that "
        "open_clip.create_model('local-dir:OUT') and poisonclip evaluate load.",
    )
    p.add_argument(
        "--data", required=True, nargs="+", help="CSV files or webdataset URLs to train on (concatenated)"
    )
    p.add_argument("--out", required=True, help="checkpoint directory")
    _add_overwrite(p, out=True)
    p.add_argument(
        "--backend",
        choices=("memory", "open_clip"),
        default="memory",
        help="memory: our in-memory loop (small data); open_clip: open_clip_train under torchrun",
    )
    _add_train_options(p)
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
    p.add_argument("--pretrained", help=PRETRAINED_HELP + " (fine-tuning; both backends)")
    p.add_argument(
        "--track-loss-epochs",
        type=int,
        help="record each sample's loss averaged over the first E epochs in OUT/sample_losses.json "
        "(for poisonclip detect's loss-tracking detector)",
    )
    _add_csv_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "detect",
        help="score every training pair with poison detectors; with a manifest, ROC-AUC etc.",
        description="Embed the training set with a trained checkpoint and give every pair a score per "
        "detector (higher = more suspicious). Detectors see the embeddings (and the early "
        "per-sample losses) only; --manifest is used to score them: ROC-AUC, PR-AUC, false-positive "
        "rate at 95%% recall, and ROC-AUC against shuffled labels (the null level, about 0.5). Writes "
        "OUT/scores.tsv and OUT/metrics.json.",
    )
    p.add_argument("--checkpoint", required=True, help="the model trained on --data (checkpoint directory)")
    p.add_argument(
        "--data", required=True, nargs="+", help="the training set as trained on: CSVs or shards, in order"
    )
    p.add_argument(
        "--manifest", nargs="+", help="poison manifests (manifest.jsonl) naming the poisons among --data"
    )
    p.add_argument("--out", required=True, help="output directory")
    _add_overwrite(p, out=True)
    p.add_argument(
        "--detectors",
        help="comma-separated detector names (poisonclip list detectors); default: all, without "
        "loss-tracking when there is no loss record",
    )
    p.add_argument("--k", type=int, help="neighbours for k-distance, SLOF and DAO (default 16)")
    p.add_argument("--lid-k", type=int, help="neighbours for LID (default 64)")
    p.add_argument(
        "--space",
        choices=("image", "text", "joint"),
        default="image",
        help="embedding the k-NN detectors search: image, caption, or both side by side (joint: "
        "--reference all only)",
    )
    p.add_argument(
        "--reference",
        choices=("batch", "all"),
        default="batch",
        help="neighbours of the k-NN detectors and Isolation Forest: the other pairs of a shuffled "
        "batch, images and captions (Huang et al.'s protocol), or all other training pairs",
    )
    p.add_argument(
        "--reference-batch-size", type=int, default=128, help="pairs a reference batch (default 128)"
    )
    p.add_argument(
        "--reshuffles", type=int, default=3, help="shuffles into batches a score is averaged over (default 3)"
    )
    p.add_argument(
        "--loss-record",
        help="per-sample early losses (default: CHECKPOINT/sample_losses.json, written by "
        "poisonclip train --track-loss-epochs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled-label null check")
    _add_csv_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser(
        "defend",
        help="apply a defense (filter, cleanclip, roclip, safeclip) to one model or dataset",
        description="Run one defense and write OUT/checkpoint/ (evaluate it with poisonclip evaluate) "
        "and OUT/defense.json (parameters, cost, the defense's own record; with --manifest, how many "
        "poisons it flagged). filter: rank --data with a detector on --checkpoint, drop the top "
        "--fraction, retrain from scratch. cleanclip: fine-tune --checkpoint on --clean-data with CLIP "
        "+ in-modal losses at each of --lrs, keep the lowest clean validation loss. roclip and "
        "safeclip: train from scratch on --data. Training options as for poisonclip train (for "
        "cleanclip only optimizer, weight decay, warm-up, device and precision apply).",
    )
    p.add_argument("defense", help="filter, cleanclip, roclip or safeclip (poisonclip list defenses)")
    p.add_argument("--out", required=True, help="output directory")
    _add_overwrite(p, out=True)
    p.add_argument("--checkpoint", help="the undefended model (filter, cleanclip)")
    p.add_argument(
        "--pretrained", help=PRETRAINED_HELP + ": the model cleanclip cleans, instead of --checkpoint"
    )
    p.add_argument(
        "--data", nargs="+", help="the (poisoned) training set: CSVs or shards (filter, roclip, safeclip)"
    )
    p.add_argument("--manifest", nargs="+", help="poison manifests, to report what the defense flagged")
    p.add_argument("--clean-data", nargs="+", help="the defender's clean pairs (cleanclip)")
    _add_train_options(p)
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
    _add_csv_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_defend)

    p = sub.add_parser(
        "evaluate",
        help="zero-shot accuracy, backdoor ASR and z-score of a checkpoint",
        description="Evaluate a checkpoint on a labelled test CSV (or shards with labels in their "
        "JSON), or on an ImageFolder directory such as ImageNet-val.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    test = p.add_mutually_exclusive_group(required=True)
    test.add_argument("--test", help="test CSV with a label column, or webdataset shards")
    test.add_argument(
        "--imagefolder", help="DIR/CLASS/*.jpg; labels are the sorted class directories (ImageNet-val style)"
    )
    p.add_argument(
        "--classnames",
        help="class names, one per line, in label order; with --imagefolder also 'imagenet' "
        "(open_clip's 1,000 names for WordNet-id directories; default: the directory names)",
    )
    p.add_argument("--max-per-class", type=int, help="with --imagefolder: the first N images of each class")
    p.add_argument(
        "--probe-train",
        help="ImageFolder train split (same class directories): also fit a linear probe on its "
        "embeddings and report probe_acc, probe_asr and probe_natural_rate",
    )
    p.add_argument(
        "--target-image",
        help="evaluate a targeted attack instead of a backdoor: the rank of --target-label (y') for "
        "this image x' under the zero-shot classifier and under a linear probe fit on half of the "
        "labelled test set (the other half gives the clean accuracies); success = rank 0. Test "
        "images identical to x' are left out of both halves",
    )
    p.add_argument(
        "--templates",
        default="openai",
        help="zero-shot prompts: openai (CLIP's 80 ImageNet prompts, the default), synthetic (the "
        "prompts written for poisonclip's synthetic shapes: pass it to evaluate that data), or a file "
        "with one template per line, {} standing for the class name (CLIP_benchmark's convention)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random patch positions")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    _add_overwrite(p, out=False)
    _add_patch_options(
        p,
        label_default=None,
        label_help="the label the backdoor's trigger should cause (without it: clean metrics only), "
        "or with --target-image the label y' that the targeted attack wanted for x' (required then)",
        trigger_from=True,
    )
    _add_csv_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="run experiment grids into a results database")
    sweep_sub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    q = sweep_sub.add_parser(
        "run",
        help="run every (configuration, seed) trial of an experiment file not yet stored",
        description="Validate the experiment file, then train and evaluate every missing trial and "
        "store each one atomically; rerun after an interruption to complete only the missing ones.",
    )
    q.add_argument("file", help="experiment file (TOML), e.g. experiments/fig4.toml")
    q.add_argument("--db", default=DEFAULT_DB, help="results database (SQLite)")
    q.add_argument(
        "--executor",
        choices=sorted(SWEEP_EXECUTORS),
        default="local",
        help="local processes, or SLURM jobs via submitit (settings: the file's [slurm])",
    )
    _add_local_sweep_options(q)
    q.add_argument(
        "--seeds-per-job",
        type=int,
        help="train this many seeds of one configuration together, as one computation (train_many: "
        "stacked weights; meant for GPUs, where one toy model leaves the card idle; not timed "
        "here). Default: all seeds when this host would train on a GPU, else 1 (on a CPU one "
        "single-thread worker a seed is as fast); with --executor slurm, decided on the submitting "
        "host, so set it there. Only for attacks whose trials train one model (not defense)",
    )
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_sweep_run)
    q = sweep_sub.add_parser("status", help="done / running / remaining trials of an experiment file")
    q.add_argument("file", help="experiment file (TOML)")
    q.add_argument("--db", default=DEFAULT_DB, help="results database (SQLite)")
    q.set_defaults(func=cmd_sweep_status)

    p = sub.add_parser(
        "report",
        help="figures (paper Figs 2-6) and Markdown/HTML tables from a results database",
        description="Draw every figure that a sweep in the database lists, and write report.md "
        "and a self-contained report.html with the tables behind every figure.",
    )
    p.add_argument("db", help="results database written by `poisonclip sweep run`")
    p.add_argument("--out", required=True, help="output directory")
    _add_overwrite(p, out=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "reproduce",
        help="run every shipped experiment (resumable), then the report and the paper-vs-toy table",
        description="Run the trials of every experiment file that the database lacks (a second call "
        "trains nothing), then write the report (figures, tables, and the paper's findings beside "
        "the toy's numbers with a verdict each) and optionally copy the figures elsewhere. "
        "Hours on a 2-core CPU from an empty database; under a minute on a complete one.",
    )
    p.add_argument(
        "files",
        nargs="*",
        help=f"experiment files (default: every {EXPERIMENTS_DIR}/*.toml, paper figures first)",
    )
    p.add_argument("--db", default=DEFAULT_DB, help="results database (SQLite), created or resumed")
    p.add_argument("--out", default="results/report", help="report directory (replaced as a whole)")
    p.add_argument(
        "--figures",
        help="also copy each figure's PNG and CSV into this directory, file by file (e.g. docs/figures)",
    )
    p.add_argument(
        "--readme",
        help="also replace the paper-vs-toy table between this Markdown file's markers "
        "(<!-- paper-vs-toy: ... --> and <!-- /paper-vs-toy -->), e.g. README.md",
    )
    _add_local_sweep_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_overwrite(p, out=True)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("list", help="list model configs, presets, attacks, triggers, detectors or defenses")
    p.add_argument("what", choices=("models", "presets", "attacks", "triggers", "detectors", "defenses"))
    p.set_defaults(func=cmd_list)
    return parser


# Options naming a command's inputs: an output replaced with --overwrite must not hold any of them.
INPUT_OPTIONS = (
    "data",
    "checkpoint",
    "test",
    "imagefolder",
    "classnames",
    "probe_train",
    "target_image",
    "target_split",
    "manifest",
    "loss_record",
    "init_checkpoint",
    "pretrained",
    "clean_data",
    "db",
)


def _check_outputs(args: argparse.Namespace) -> list[str]:
    """Refuse bad output paths before any work (see ``check_output``); the outputs given."""
    from poisonclip.data.io import check_output

    inputs = []
    for dest in INPUT_OPTIONS:
        values = getattr(args, dest, None) or ()
        for value in [values] if isinstance(values, str) else values:
            # shard URLs ('dir/{00000..00009}.tar', 'a::b'): the directory before the brace
            inputs += [
                os.path.dirname(part.split("{")[0]) if "{" in part else part for part in value.split("::")
            ]
    if getattr(args, "dry_run", False):  # train --dry-run only prints a command: it writes nothing
        return []
    outputs = []
    for dest, directory in getattr(args, "outputs", {}).items():
        if (path := getattr(args, dest)) is not None:
            name = f"--{dest.replace('_', '-')}"
            check_output(path, overwrite=args.overwrite, inputs=inputs, directory=directory, name=name)
            outputs.append(path)
    return outputs


# Options that several commands share, with their smallest sensible value: checked before any work.
MINIMUMS = {"image_size": 1, "k": 1, "lid_k": 2}  # LID from a single neighbour is constant


def _check_shared_options(args: argparse.Namespace) -> None:
    sep = getattr(args, "csv_separator", None)
    if sep is not None and (len(sep) != 1 or sep in '\r\n"'):
        raise UsageError(
            f"--csv-separator must be one character, not a quote or a line break, got {sep!r} "
            "(for a tab, leave the default or type $'\\t' in bash)"
        )
    label = getattr(args, "target_label", None)
    if label is not None and not label.strip():
        raise UsageError("--target-label is empty")
    for dest, least in MINIMUMS.items():
        if (value := getattr(args, dest, None)) is not None and value < least:
            raise UsageError(f"--{dest.replace('_', '-')} must be at least {least}, got {value}")


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings printed as one line each, as errors are: no source file, line number or code line.
    (warnings.catch_warnings does not restore formatwarning; recording warnings is unaffected.)"""
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"poisonclip: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    from poisonclip.data.io import overwrite_allowed

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_shared_options(args)
        outputs = _check_outputs(args)
        with _one_line_warnings(), overwrite_allowed(outputs if getattr(args, "overwrite", False) else ()):
            args.func(args)
    except UsageError as err:
        print(f"poisonclip: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
