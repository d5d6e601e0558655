import open_clip
import torch
from torch import nn

from poisonclip.data.prompts import TEMPLATE_SETS
from poisonclip.evaluate import accuracy, zero_shot_classifier, zero_shot_predict

CLASSES = ["circle", "square", "star", "heart"]


class ToyCLIP(nn.Module):
    """Text embedding = indicator of which class word's token occurs (plus a shared offset)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.class_tokens = [int(open_clip.tokenize([c])[0, 1]) for c in CLASSES]

    def encode_text(self, tokens, normalize=False):
        hits = torch.stack([(tokens == t).any(dim=1).float() for t in self.class_tokens], dim=1)
        out = hits + 0.1
        return nn.functional.normalize(out, dim=-1) if normalize else out


def test_zero_shot_classifier_recovers_the_classes():
    classifier = zero_shot_classifier(ToyCLIP(), CLASSES, "synthetic")
    assert classifier.shape == (len(CLASSES), len(CLASSES))  # [D, C]
    labels = torch.tensor([0, 1, 2, 3, 2, 1])
    image_features = nn.functional.normalize(torch.eye(4)[labels] + 0.05, dim=1)
    predictions = zero_shot_predict(image_features, classifier)
    assert accuracy(predictions, labels) == 1.0
    # a feature pointing at "star" is classified as star whatever the prompt set
    openai = zero_shot_classifier(ToyCLIP(), CLASSES, "openai")
    assert zero_shot_predict(torch.eye(4)[2:3], openai).item() == 2


def test_template_sets():
    assert len(TEMPLATE_SETS["openai"]) == 80
    assert all("{}" in t for t in TEMPLATE_SETS["synthetic"])
