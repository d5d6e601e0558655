"""Detectors of poisoned training pairs and their scoring against the poison manifest.

Every detector scores every training pair (higher = more suspicious) from a trained model's
embeddings of the training set or from its early per-sample losses; ``list_detectors()`` names
them. Importing this package registers them all.
"""

from poisonclip.detect import knn, simple  # noqa: F401  (registers the detectors)
from poisonclip.detect.loss_tracking import LossTracker, load_loss_record, save_loss_record
from poisonclip.detect.pipeline import ROC_GRID, Detection, run_detectors, write_detection
from poisonclip.detect.registry import (
    DetectorInputs,
    detector_params,
    embed_training_set,
    get_detector,
    list_detectors,
    register_detector,
    run_detector,
)
from poisonclip.detect.scoring import (
    detection_metrics,
    fpr_at_recall,
    poison_labels,
    pr_auc,
    roc_auc,
    roc_curve,
    roc_on_grid,
)

__all__ = [
    "ROC_GRID",
    "Detection",
    "DetectorInputs",
    "LossTracker",
    "detection_metrics",
    "detector_params",
    "embed_training_set",
    "fpr_at_recall",
    "get_detector",
    "list_detectors",
    "load_loss_record",
    "poison_labels",
    "pr_auc",
    "register_detector",
    "roc_auc",
    "roc_curve",
    "roc_on_grid",
    "run_detector",
    "run_detectors",
    "save_loss_record",
    "write_detection",
]
