"""``poisonclip evaluate``: zero-shot accuracy, backdoor ASR and z-score, or a targeted attack's x′."""

from __future__ import annotations

import argparse
import json

from poisonclip.cli import options
from poisonclip.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(sub, "evaluate", run, "zero-shot accuracy, backdoor ASR and z-score of a checkpoint")
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
        help="ImageFolder train split: also fit a linear probe on its embeddings and report "
        "probe_acc, probe_asr and probe_natural_rate. Its class directories are named as the test "
        "set's classes (underscores as spaces; matched by name), or are as many and in the same "
        "sorted order (ImageNet's WordNet ids)",
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
    options.add_overwrite(p, out=False)
    options.add_backdoor_options(
        p,
        label_default=None,
        label_help="the label the backdoor's trigger should cause (without it: clean metrics only), "
        "or with --target-image the label y' that the targeted attack wanted for x' (required then)",
        trigger_from=True,
    )
    options.add_csv_options(p)
    options.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a labelled test CSV (or shards with labels in their JSON), or on an
    ImageFolder directory such as ImageNet-val."""
    from poisonclip.attacks.triggers.options import trigger_from_args
    from poisonclip.cli.train import note_resized
    from poisonclip.data.prompts import resolve_templates
    from poisonclip.data.reading import read_test_set
    from poisonclip.train.checkpoint import load_checkpoint
    from poisonclip.train.model import image_size_of

    if args.target_image:
        if args.probe_train:
            raise UsageError("--target-image fits its probe on half of the test set; drop --probe-train")
        if args.target_label is None:
            raise UsageError("--target-image needs --target-label: the label y' the attack wanted for x'")
    templates = resolve_templates(args.templates)  # a bad prompt file fails before any work
    trigger = trigger_from_args(args)  # so does a bad trigger
    model, model_config = load_checkpoint(args.checkpoint)
    image_size = image_size_of(model_config)
    if not args.imagefolder:
        note_resized(args, [args.test], image_size, "its images are")
    test, classnames = read_test_set(
        image_size,
        test=args.test,
        imagefolder=args.imagefolder,
        classnames=args.classnames,
        max_per_class=args.max_per_class,
        csv=options.csv_format(args),
        progress=options.progress(args),
    )
    if args.target_image:
        from poisonclip.attacks.targets import TargetSource, load_target
        from poisonclip.evaluate.model_metrics import target_image_metrics

        target = load_target(TargetSource(args.target_label, image=args.target_image), image_size)
        metrics = target_image_metrics(model, model_config, target, test, classnames, templates)
    else:
        from poisonclip.data.reading import read_probe_set
        from poisonclip.evaluate.model_metrics import model_metrics

        backdoor = None  # no backdoor named: the clean metrics only
        if args.target_label is not None:
            backdoor = {"target_label": args.target_label, "trigger": trigger, "seed": args.seed}
        probe_train = None
        if args.probe_train:
            probe_train = read_probe_set(
                args.probe_train, image_size, classnames, args.max_per_class, options.progress(args)
            )
        metrics = model_metrics(model, model_config, test, classnames, templates, backdoor, probe_train)
    if args.out:
        from poisonclip.data.io import write_json_atomic

        write_json_atomic(args.out, metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
