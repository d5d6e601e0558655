"""``poisonclip demo``: the paper's backdoor (§3.3, §5.1) end to end on the embedded default.

Generates the synthetic data, writes a poison set (poison-only CSV + manifest), trains a clean and
a backdoored model (same seed and data apart from the poisons), evaluates both and writes
``metrics.json``, the resolved config and a similarity-histogram figure (paper Fig 3 right).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from poisonclip.attacks.backdoor import make_backdoor
from poisonclip.attacks.poison_set import read_poison_set, write_poison_set
from poisonclip.attacks.triggers import Checkerboard, Trigger
from poisonclip.data.cache import prepare_data
from poisonclip.data.dataset import ImageTextDataset, read_classnames, read_csv_dataset
from poisonclip.data.io import atomic_path, write_json_atomic
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.evaluate.metrics import sample_pair_similarities
from poisonclip.experiments.backdoor_trial import evaluation_placement, placed
from poisonclip.experiments.trial import train_and_evaluate_backdoor
from poisonclip.train.config import TrainConfig, load_preset
from poisonclip.train.loop import resolve_device
from poisonclip.train.parallel import run_in_processes


@dataclass(frozen=True)
class DemoConfig:
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: TrainConfig = field(default_factory=lambda: load_preset("demo"))
    target_label: str = "star"
    poison_count: int = 100  # 100 added to 20,000 clean pairs: 0.50% of the training set
    trigger: Trigger = field(
        default_factory=Checkerboard
    )  # 4x4 pixels of 32x32 (1.6% of the area), upper-left
    eval_placement: str | None = None  # where test images carry it; None: the trigger's default placement
    seed: int = 0  # poison selection; the model seed is train.seed


def run_demo(
    config: DemoConfig = DemoConfig(), out_dir: str | Path = "results/demo", progress: bool = True
) -> dict:
    """Run the demo into ``out_dir`` as one atomic output (data, poisons, checkpoints, metrics)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        return _run_demo(config, tmp, progress)


def _run_demo(config: DemoConfig, out_dir: Path, progress: bool) -> dict:
    if config.target_label not in config.data.classnames:
        raise UsageError(f"target label {config.target_label!r} is not one of the synthetic classes")
    start = time.perf_counter()
    data_dir = out_dir / "data"
    prepare_data(data_dir, config.data)
    train = read_csv_dataset(data_dir / "train.csv", progress=progress)
    test = read_csv_dataset(data_dir / "test.csv", progress=progress)
    classnames = read_classnames(data_dir / "classnames.txt")

    poisons = make_backdoor(train, config.target_label, config.poison_count, config.trigger, config.seed)
    write_poison_set(out_dir / "poisons", poisons)
    trigger = placed(poisons.trigger, evaluation_placement(config.trigger, config.eval_placement))
    poisoned = ImageTextDataset.concat([train, read_poison_set(out_dir / "poisons").samples])

    jobs = {"clean": train, "backdoor": poisoned}
    device = resolve_device(config.train.device)
    # On a CPU the two trainings run side by side in single-thread processes (faster than
    # one after the other with two threads each); the first one's progress bar is shown.
    workers = 1 if device.type != "cpu" else None
    print(f"training the clean ({len(train):,} pairs) and backdoored ({len(poisoned):,}) models ...")
    train_start = time.perf_counter()
    outcomes = run_in_processes(
        train_and_evaluate_backdoor,
        [
            {
                "dataset": dataset,
                "test": test,
                "classnames": classnames,
                "config": config.train,
                "target_label": config.target_label,
                "trigger": trigger,
                "templates": "synthetic",  # the shapes' prompts: the demo's data is the synthetic set
                "checkpoint_dir": out_dir / "checkpoints" / name,
                "progress": progress and i == 0,
            }
            for i, (name, dataset) in enumerate(jobs.items())
        ],
        workers=workers,
    )
    train_seconds = time.perf_counter() - train_start  # both models, wall time
    results, panels = {}, {}
    for name, (metrics, evaluation) in zip(jobs, outcomes, strict=True):
        results[name] = metrics
        generator = torch.Generator().manual_seed(0)
        panels[f"{name} model (z = {metrics['zscore']:.2f})"] = (
            sample_pair_similarities(evaluation.clean_features, 50_000, generator),
            sample_pair_similarities(evaluation.patched_features, 50_000, generator),
        )

    summary = {
        **results,
        "poison_count": config.poison_count,
        "poison_rate": config.poison_count / len(poisoned),
        "trigger": config.trigger.name,
        "trigger_params": config.trigger.values(),
        "trigger_area_fraction": config.trigger.area_fraction(train.images.shape[-1]),
        "target_label": config.target_label,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "config": {**dataclasses.asdict(config), "trigger": config.trigger.record()},
    }
    write_json_atomic(out_dir / "metrics.json", summary)
    plot_similarity_histograms(panels, out_dir / "similarity_histograms.png")
    return summary


def plot_similarity_histograms(
    panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
) -> Path:
    """Paper Fig 3 right: histograms of clean-pair vs patched-pair cosine similarity (matplotlib is
    imported here, so the library never pays for it).

    ``panels`` maps a title to (clean-pair similarities [P], patched-pair similarities [P]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    bins = torch.linspace(-1, 1, 101).numpy()
    for ax, (title, (clean, patched)) in zip(axes[0], panels.items(), strict=True):
        ax.hist(clean.numpy(), bins=bins, density=True, alpha=0.6, label="clean pairs")
        ax.hist(patched.numpy(), bins=bins, density=True, alpha=0.6, label="patched pairs")
        ax.set_title(title)
        ax.set_xlabel("cosine similarity of image embeddings")
        ax.set_ylabel("density")
        ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def format_table(summary: dict) -> str:
    rows = [
        ("clean zero-shot top-1", "zero_shot_acc", "{:.3f}"),
        ("attack success rate (ASR)", "asr", "{:.3f}"),
        ("natural rate (chance)", "natural_rate", "{:.3f}"),
        ("backdoor z-score", "zscore", "{:.2f}"),
        ("clean-pair similarity", "clean_pair_mean", "{:.3f}"),
        ("patched-pair similarity", "patched_pair_mean", "{:.3f}"),
        ("train seconds", "train_seconds", "{:.0f}"),
    ]
    lines = [f"{'':28}{'clean':>10}{'backdoor':>10}"]
    for title, key, fmt in rows:
        values = "".join(f"{fmt.format(summary[m][key]):>10}" for m in ("clean", "backdoor"))
        lines.append(f"{title:28}{values}")
    params = ", ".join(f"{k}={v}" for k, v in summary["trigger_params"].items())
    area = summary["trigger_area_fraction"]
    lines.append(
        f"poisons: {summary['poison_count']} ({summary['poison_rate']:.2%} of the training set), "
        f"trigger {summary['trigger']}({params})"
        + (f" on {area:.2%} of the image" if area is not None else "")
        + f", target {summary['target_label']!r}; wall time {summary['wall_seconds']:.0f} s"
    )
    return "\n".join(lines)
