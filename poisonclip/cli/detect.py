"""``poisonclip detect``: every training pair scored by poison detectors; with a manifest, ROC-AUC etc."""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonclip.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "detect", run, "score every training pair with poison detectors; with a manifest, ROC-AUC etc."
    )
    p.add_argument("--checkpoint", required=True, help="the model trained on --data (checkpoint directory)")
    p.add_argument(
        "--data", required=True, nargs="+", help="the training set as trained on: CSVs or shards, in order"
    )
    p.add_argument(
        "--manifest", nargs="+", help="poison manifests (manifest.jsonl) naming the poisons among --data"
    )
    options.add_out_dir(p)
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
    options.add_csv_options(p)
    options.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    """Embed the training set with a trained checkpoint and give every pair a score per detector
    (higher = more suspicious). Detectors see the embeddings (and the early per-sample losses)
    only; --manifest is used to score them: ROC-AUC, PR-AUC, false-positive rate at 95% recall,
    and ROC-AUC against shuffled labels (the null level, about 0.5). Writes OUT/scores.tsv and
    OUT/metrics.json."""
    from poisonclip.detect import (
        embed_training_set,
        get_detector,
        list_detectors,
        load_loss_record,
        run_detectors,
        write_detection,
    )
    from poisonclip.detect.inputs import detector_settings, read_training_set
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
    training = read_training_set(
        args.data,
        args.manifest,
        image_size_of(model_config),
        options.csv_format(args),
        options.progress(args),
    )
    dataset, labels = training.dataset, training.labels
    early_loss = load_loss_record(record, dataset.keys) if "loss-tracking" in names else None
    inputs = embed_training_set(model, dataset, model_config, early_loss)
    settings = detector_settings(
        names,
        k=args.k,
        lid_k=args.lid_k,
        space=args.space,
        reference=args.reference,
        reference_batch_size=args.reference_batch_size,
        reshuffles=args.reshuffles,
    )
    detection = run_detectors(inputs, settings, labels, args.seed)
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
    return 0
