"""Evaluation: embeddings → zero-shot predictions → metrics (pure functions on tensors)."""

from poisonclip.data.prompts import TEMPLATE_SETS
from poisonclip.evaluate.embeddings import encode_images, encode_texts
from poisonclip.evaluate.linear_probe import fit_linear_probe, probe_scores, probe_split
from poisonclip.evaluate.metrics import (
    accuracy,
    attack_success_rate,
    backdoor_zscore,
    pair_similarity_moments,
    sample_pair_similarities,
)
from poisonclip.evaluate.suite import BackdoorEvaluation, evaluate_backdoor
from poisonclip.evaluate.targeted import retrieval_ranks, success_rate, target_ranks
from poisonclip.evaluate.targeted_suite import (
    TargetedEvaluation,
    evaluate_targeted,
    evaluate_text_targets,
)
from poisonclip.evaluate.zeroshot import zero_shot_classifier, zero_shot_predict

__all__ = [
    "TEMPLATE_SETS",
    "BackdoorEvaluation",
    "TargetedEvaluation",
    "accuracy",
    "attack_success_rate",
    "backdoor_zscore",
    "encode_images",
    "encode_texts",
    "evaluate_backdoor",
    "evaluate_targeted",
    "evaluate_text_targets",
    "fit_linear_probe",
    "pair_similarity_moments",
    "probe_scores",
    "probe_split",
    "retrieval_ranks",
    "sample_pair_similarities",
    "success_rate",
    "target_ranks",
    "zero_shot_classifier",
    "zero_shot_predict",
]
