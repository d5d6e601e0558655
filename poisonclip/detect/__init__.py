"""Detectors of poisoned training pairs and their scoring against the poison manifest.

Every detector scores every training pair (higher = more suspicious) from a trained model's
embeddings of the training set or from its early per-sample losses; ``list_detectors()`` names
them. The names below load on first use: listing the detectors imports no torch, and a detector's
module is imported when it is first looked up.
"""

from poisonclip.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.detect.loss_tracking": ("LossTracker", "load_loss_record", "save_loss_record"),
        "poisonclip.detect.pipeline": ("ROC_GRID", "Detection", "run_detectors", "write_detection"),
        "poisonclip.detect.registry": (
            "DetectorInputs",
            "detector_params",
            "embed_training_set",
            "get_detector",
            "list_detectors",
            "register_detector",
            "run_detector",
        ),
        "poisonclip.detect.scoring": (
            "detection_metrics",
            "fpr_at_recall",
            "poison_labels",
            "pr_auc",
            "roc_auc",
            "roc_curve",
            "roc_on_grid",
        ),
    },
)
