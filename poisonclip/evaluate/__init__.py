"""Evaluation: embeddings → zero-shot predictions → metrics (pure functions on tensors)."""

from poisonclip.evaluate.embeddings import encode_images, encode_texts
from poisonclip.evaluate.metrics import (
    accuracy,
    attack_success_rate,
    backdoor_zscore,
    pair_similarity_moments,
    sample_pair_similarities,
)
from poisonclip.evaluate.suite import BackdoorEvaluation, evaluate_backdoor
from poisonclip.evaluate.zeroshot import TEMPLATE_SETS, zero_shot_classifier, zero_shot_predict

__all__ = [
    "TEMPLATE_SETS",
    "BackdoorEvaluation",
    "accuracy",
    "attack_success_rate",
    "backdoor_zscore",
    "encode_images",
    "encode_texts",
    "evaluate_backdoor",
    "pair_similarity_moments",
    "sample_pair_similarities",
    "zero_shot_classifier",
    "zero_shot_predict",
]
