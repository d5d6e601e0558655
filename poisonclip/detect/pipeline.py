"""Run several detectors on one training set, score them, and write the results."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poisonclip.data.io import atomic_path
from poisonclip.detect.registry import DetectorInputs, run_detector
from poisonclip.detect.scoring import detection_metrics, roc_on_grid

ROC_GRID = np.linspace(0.0, 1.0, 101)  # false-positive rates at which ROC curves are stored
SCORES_NAME = "scores.tsv"
METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class Detection:
    """Scores of each detector and, where poisons are known, how well they rank them."""

    scores: dict[str, torch.Tensor]  # detector -> float64 [N], higher = more suspicious
    seconds: dict[str, float]  # detector -> wall-clock
    metrics: dict[str, dict[str, float | int]]  # detector -> detection metrics (empty without labels)
    roc: dict[str, list[float]]  # detector -> true-positive rate [len(ROC_GRID)] (empty without labels)


def run_detectors(
    inputs: DetectorInputs,
    detectors: Mapping[str, Mapping[str, object]],
    labels: torch.Tensor | None = None,
    seed: int = 0,
) -> Detection:
    """Run each ``detectors`` name with its parameters; score against ``labels`` bool [N] if given
    (needs at least one poison and one clean pair). ``seed`` permutes the labels of the null check.

    A parameter ``detector`` names the registered detector to run under another name (a variant:
    ``{"slof-all": {"detector": "slof", "reference": "all"}}``)."""
    scores, seconds, metrics, roc = {}, {}, {}, {}
    for name, params in detectors.items():
        start = time.perf_counter()
        settings = dict(params)
        scores[name] = run_detector(settings.pop("detector", name), inputs, **settings)
        seconds[name] = time.perf_counter() - start
        if labels is not None:
            metrics[name] = detection_metrics(scores[name], labels, seed)
            roc[name] = roc_on_grid(scores[name], labels, ROC_GRID)
    return Detection(scores, seconds, metrics, roc)


def write_detection(
    out_dir: str | Path,
    keys: Sequence[str],
    detection: Detection,
    labels: torch.Tensor | None = None,
    meta: Mapping[str, object] | None = None,
) -> Path:
    """Write ``scores.tsv`` (key, poison 0/1 if known, one column per detector) and ``metrics.json``
    (``meta``, timings, detection metrics, ROC curves on ``ROC_GRID``), atomically."""
    out_dir = Path(out_dir)
    names = list(detection.scores)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / SCORES_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["key", *(["poison"] if labels is not None else []), *names])
            columns = [detection.scores[name].tolist() for name in names]
            for i, key in enumerate(keys):
                poison = [int(labels[i])] if labels is not None else []
                writer.writerow([key, *poison, *(f"{column[i]:.9g}" for column in columns)])
        record = {
            **(meta or {}),
            "seconds": detection.seconds,
            "detection": detection.metrics,
            "roc": {"fpr": ROC_GRID.tolist(), "tpr": detection.roc} if detection.roc else None,
        }
        (tmp / METRICS_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir
