"""Embedding + zero-shot evaluation: poisonclip's evaluation path vs a plain per-batch loop.

Ours: ``zero_shot_classifier`` + ``encode_images`` (batches of 128 under ``torch.inference_mode``,
one single-thread worker per core) + ``zero_shot_predict``, as ``evaluate_backdoor`` runs them.
Baseline: the loop a competent user writes around the same model and the same in-memory uint8
images — batches of 64 (the demo's batch size), ``torch.no_grad()`` (not inference mode),
normalise, encode, logits against the same zero-shot classifier, argmax; the classifier built the
same way (open_clip's builder). For reference, the same loop without ``no_grad`` (autograd records
every op, and nn.MultiheadAttention leaves its fused inference path): the naive loop. Both on the
demo model (``toy-vit-w64``, untrained: the cost does not depend on the weights), with torch's
default threads. Also: our time at three test-set sizes (the scaling table).

    .venv/bin/python bench/bench_eval.py        # ~30 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
from functools import partial

import open_clip
import torch
from timing import machine, median_seconds

from poisonclip.data.prompts import SYNTHETIC_TEMPLATES
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.evaluate.embeddings import encode_images
from poisonclip.evaluate.zeroshot import zero_shot_classifier, zero_shot_predict
from poisonclip.train.model import Tokenizer, context_length_of, create_model, get_model_config, tokenizer_for
from poisonclip.train.preprocess import normalize_images

CLASSNAMES = list(SyntheticConfig().classnames)


def ours(model: torch.nn.Module, images: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    classifier = zero_shot_classifier(model, CLASSNAMES, "synthetic", tokenizer)
    return zero_shot_predict(encode_images(model, images), classifier)


def plain_loop(
    model: torch.nn.Module, images: torch.Tensor, context_length: int, no_grad: bool = True
) -> torch.Tensor:
    batch_size = 64
    with torch.set_grad_enabled(not no_grad):
        classifier = open_clip.build_zero_shot_classifier(
            model,
            partial(open_clip.tokenize, context_length=context_length),
            CLASSNAMES,
            list(SYNTHETIC_TEMPLATES),
            num_classes_per_batch=None,
            device="cpu",
        )
        predictions = []
        for start in range(0, len(images), batch_size):
            batch = normalize_images(images[start : start + batch_size])
            features = model.encode_image(batch, normalize=True)
            predictions.append((features @ classifier).argmax(dim=1))
    return torch.cat(predictions).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=SyntheticConfig().num_test, help="test-set size")
    parser.add_argument("--model", default="toy-vit-w64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = get_model_config(args.model)
    model = create_model(config, seed=0).eval()
    context_length, tokenizer = context_length_of(config), tokenizer_for(config)
    generator = torch.Generator().manual_seed(0)
    sizes = (args.images // 2, args.images * 2, args.images * 8)
    images = torch.randint(0, 256, (sizes[-1], 3, 32, 32), dtype=torch.uint8, generator=generator)
    test = images[: args.images]

    if not torch.equal(ours(model, test, tokenizer), plain_loop(model, test, context_length)):
        raise AssertionError("the two evaluations disagree")
    fast = median_seconds(lambda: ours(model, test, tokenizer), args.repeats)
    plain = median_seconds(lambda: plain_loop(model, test, context_length), args.repeats)
    naive = median_seconds(lambda: plain_loop(model, test, context_length, no_grad=False), args.repeats)
    scaling = [median_seconds(lambda k=k: ours(model, images[:k], tokenizer), args.repeats) for k in sizes]
    print(
        f"evaluation [{machine()}]: {args.model}, {args.images:,} test images + {len(CLASSNAMES)} classes x "
        f"{len(SYNTHETIC_TEMPLATES)} prompts: ours {fast:.3f} s ({args.images / fast:,.0f} images/s), plain "
        f"per-batch loop {plain:.3f} s ({args.images / plain:,.0f} images/s), the same without no_grad "
        f"{naive:.3f} s ({args.images / naive:,.0f} images/s); ours at "
        f"{', '.join(f'{k:,}' for k in sizes)} images: {', '.join(f'{s:.3f}' for s in scaling)} s; "
        f"speed-up vs the loop without no_grad {naive / fast:.2f}x, vs the competent loop {plain / fast:.2f}x"
    )


if __name__ == "__main__":
    main()
