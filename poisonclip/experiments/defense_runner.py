"""The attack × defense matrix as a sweep runner: one poisoned model per (attack, seed), every
defense of the grid applied to it, every detector scored on it.

An experiment file (see ``experiments/defenses_*.toml``)::

    attack = "defense"            # this runner
    [defense]                     # DefenseMatrixParams fields
    attack_type = "backdoor"      # or "targeted"
    defense = ["none", "filter:slof@5%", "cleanclip", "roclip", "safeclip"]

The ``defense`` axis does not change the poisoned (undefended) model, so all defenses of one
attack configuration and seed are one trial: the undefended model is trained once (with an
eval-mode loss pass after each of its first epochs for the loss-tracking detector), every
detector ranks its training set (Huang et al.'s batch protocol, and the k-NN detectors and
Isolation Forest also over all pairs, as ``<name>-all``), and each defense then starts from that
model, that training set or both (``poisonclip.defend``). Each cell's row holds the defended
model's clean zero-shot accuracy, the attack's success (``attack_success``: the backdoor ASR, or
the zero-shot success rate of the targeted attack) with the attack's own metrics (z-score for the
backdoor), the defense's cost relative to undefended training, what it flagged, and the detection
metrics and ROC curves of all detectors on the undefended model (the same in every row of a
trial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.defend import DefenseContext, apply_defense, parse_defense
from poisonclip.defend.output import flagged_summary
from poisonclip.detect import (
    ROC_GRID,
    LossTracker,
    detector_params,
    embed_training_set,
    list_detectors,
    poison_labels,
    run_detectors,
)
from poisonclip.errors import UsageError
from poisonclip.evaluate.suite import evaluate_clean
from poisonclip.experiments.backdoor_trial import TriggerKeys
from poisonclip.experiments.poisoning import (
    TrialData,
    check_matrix_attack,
    get_matrix_attack,
    list_matrix_attacks,
)
from poisonclip.experiments.runners import CellResult, register_runner
from poisonclip.keys import ADDED_LATER, config_dict
from poisonclip.train.fit import train_model
from poisonclip.train.model import get_model_config, tokenizer_for

if TYPE_CHECKING:
    from poisonclip.data.files import DataConfig
    from poisonclip.experiments.grid import Trial

METHODS_REVISION = 2  # 2: the defenses and detectors as their authors' code runs them (issue 16)
# Detectors also scored with poisonclip's earlier all-pairs reference set (metrics "<name>-all"),
# so the README can set the two reference sets side by side on the same models.
ALL_PAIRS_VARIANTS = {
    "k-distance": {"reference": "all", "normalize": True},
    "slof": {"reference": "all", "normalize": True},
    "dao": {"reference": "all", "normalize": True},
    "lid": {"reference": "all", "normalize": True},
    "isolation-forest": {"reference": "all"},
}


@dataclass(frozen=True)
class DefenseMatrixParams(TriggerKeys, TargetedOptions):
    """The keys of ``[defense]`` in an experiment file: these fields; for the targeted attack also
    its poisons' options (``TargetedOptions``: captions, noise_std, ...), and for the backdoor its
    trigger's parameters (as in ``[backdoor]``: ``experiments/backdoor_trial.py``)."""

    # the matrix had only ``captions`` of the targeted options before they were declared once
    ADDED_LATER_FIELDS: ClassVar[tuple[str, ...]] = (
        "noise_std",
        "perturb_captions",
        "template_set",
        "word_boundary",
    )

    attack_type: str = "backdoor"  # "backdoor" (paper §3.3) or "targeted" (§3.1)
    defense: str = "none"  # none | filter:<detector>@<percent>% | cleanclip | roclip | safeclip
    # backdoor; None: the trigger's default (a trigger without the parameter keeps None, unhashed)
    target_label: str = "star"
    poison_count: int = 100
    patch_size: int | None = field(default=None, metadata={ADDED_LATER: True})
    placement: str | None = field(default=None, metadata={ADDED_LATER: True})
    # targeted
    num_targets: int = 4  # K targets per model
    poisons_per_target: int = 16
    # the defender
    clean_pairs: int = 5000  # CleanCLIP's trusted set: this many clean training pairs (by seed)
    track_loss_epochs: int = 2  # eval-mode loss passes after each of the undefended run's first epochs
    # The revision of the defenses' and detectors' implementations. Hashed into the result keys on
    # purpose (no ADDED_LATER): results of the implementations before issue 16 (all-pairs
    # detectors, on-the-fly loss tracking, SafeCLIP's mixed batches) are never reused as theirs.
    methods_revision: int = METHODS_REVISION
    trigger: str = field(default="checkerboard", metadata={ADDED_LATER: True})  # attacks/triggers
    trigger_params: tuple[tuple[str, Any], ...] = field(default=(), metadata={ADDED_LATER: True})

    def __post_init__(self) -> None:
        if self.attack_type not in list_matrix_attacks():
            raise UsageError(f"attack_type must be one of {list_matrix_attacks()}, got {self.attack_type!r}")
        TargetedOptions.__post_init__(self)
        parse_defense(self.defense)  # an unknown defense or detector, or a bad fraction: UsageError
        self.resolve_trigger()
        if min(self.poison_count, self.num_targets, self.poisons_per_target, self.track_loss_epochs) < 1:
            raise UsageError("poison_count, num_targets, poisons_per_target, track_loss_epochs must be >= 1")
        if self.clean_pairs < 2:
            raise UsageError(f"clean_pairs must be at least 2, got {self.clean_pairs}")
        if self.methods_revision != METHODS_REVISION:
            raise UsageError(
                f"methods_revision {self.methods_revision}: only the current implementations "
                f"({METHODS_REVISION}) can run"
            )

    def training_params(self) -> dict:
        """Everything but the defense: all defenses of an attack share the poisoned model."""
        params = config_dict(self)
        del params["defense"]
        return params

    def check(self, data: DataConfig) -> None:
        check_matrix_attack(self.attack_type, self, data)
        if self.clean_pairs > data.num_train:
            raise UsageError(f"clean_pairs {self.clean_pairs} exceeds num_train {data.num_train}")
        name, defense = parse_defense(self.defense)
        if name == "cleanclip":
            validation = round(defense.validation_fraction * self.clean_pairs)
            if min(validation, self.clean_pairs - validation) < defense.batch_size:
                raise UsageError(
                    f"{self.defense}: clean_pairs {self.clean_pairs} leave fewer than one batch of "
                    f"{defense.batch_size} for fine-tuning or validation"
                )
        if name == "roclip" and defense.pool_size >= data.num_train:
            raise UsageError(f"{self.defense}: the pool must be much smaller than num_train {data.num_train}")


@register_runner("defense", DefenseMatrixParams)
def run_defense_trial(
    trial: Trial, train: ImageTextDataset, test: ImageTextDataset, classnames: list[str]
) -> list[CellResult]:
    """Poison ``train``, train the undefended model, score every detector, then apply and evaluate
    each cell's defense."""
    params, recipe = trial.cells[0].params, trial.cells[0].train.replace(seed=trial.seed)
    poisoned = get_matrix_attack(params.attack_type)(
        params, TrialData(train, test, classnames, trial.seed, recipe)
    )
    dataset, manifest, evaluate = poisoned.dataset, poisoned.manifest, poisoned.evaluate

    def clean_accuracy(model: torch.nn.Module) -> float:
        """Clean zero-shot top-1 on the test split: a per-epoch diagnostic, never a decision (with the
        first cell's prompts: cells that differ in prompts alone share one defended model)."""
        model_config = get_model_config(recipe.model)
        templates, tokenizer = trial.cells[0].data.templates, tokenizer_for(model_config)
        return evaluate_clean(model, test, classnames, templates, tokenizer).metrics["zero_shot_acc"]

    labels = poison_labels(dataset.keys, manifest)
    tracker = LossTracker(
        len(dataset), min(params.track_loss_epochs, recipe.epochs), recipe.batch_size, trial.seed
    )
    model, model_config, stats = train_model(dataset, recipe, progress=False, on_epoch_end=tracker)
    early_loss = tracker.mean()
    inputs = embed_training_set(model, dataset, model_config, early_loss)
    settings = {
        **{
            name: {"seed": trial.seed} if "seed" in detector_params(name) else {} for name in list_detectors()
        },
        **{f"{name}-all": {"detector": name, **params} for name, params in ALL_PAIRS_VARIANTS.items()},
    }
    detection = run_detectors(inputs, settings, labels, trial.seed)
    detection_metrics = {
        f"detect_{name}_{key}": value
        for name, metrics in detection.metrics.items()
        for key, value in metrics.items()
    }
    roc_curves = {"roc_fpr": ROC_GRID.tolist(), **{f"roc_{name}": tpr for name, tpr in detection.roc.items()}}

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(trial.seed))
    clean = train.subset(order[: params.clean_pairs])  # the defender's trusted pairs: clean by construction
    context = DefenseContext(
        recipe, dataset, model, clean, early_loss, classnames=tuple(classnames), monitor=clean_accuracy
    )
    results, outcomes = [], {}
    for cell in trial.cells:
        templates, spec = cell.data.templates, cell.params.defense
        if spec not in outcomes:  # cells of one defense (differing in prompts alone) share its model
            outcomes[spec] = apply_defense(spec, context)
        outcome = outcomes[spec]
        metrics = {
            **evaluate(outcome.model, model_config, templates),
            **{k: v for k, v in outcome.record.items() if isinstance(v, int | float)},
            **flagged_summary(outcome, labels),
            **detection_metrics,
            "defense_seconds": outcome.seconds,
            "undefended_train_seconds": stats.train_seconds,
            "defense_cost": outcome.seconds / stats.train_seconds,  # relative to undefended training
            "num_train_pairs": len(dataset),
            "poison_count_total": len(manifest),
            "poison_rate": len(manifest) / len(dataset),
        }
        curves = dict(roc_curves)
        for key in ("safe_fractions", "zero_shot_acc_per_epoch"):  # SafeCLIP's split, RoCLIP's accuracy
            if key in outcome.record:
                curves[key] = outcome.record[key]
        if "matching" in outcome.record:  # RoCLIP's per-matching-epoch diagnostic
            for field in ("epoch", "own_class_share", "random_share"):
                if all(field in row for row in outcome.record["matching"]):  # own class: labels known
                    curves[f"matching_{field}"] = [row[field] for row in outcome.record["matching"]]
        if "lr_sweep" in outcome.record:  # CleanCLIP: every learning rate tried, chosen or not
            sweep = outcome.record["lr_sweep"]
            models = {**outcome.alternatives, f"lr={outcome.record['chosen_lr']:g}": outcome.model}
            scored = [evaluate(models[f"lr={row['lr']:g}"], model_config, templates) for row in sweep]
            curves.update(
                lr_sweep_lr=[row["lr"] for row in sweep],
                lr_sweep_validation_loss=[row["validation_loss"] for row in sweep],
                lr_sweep_attack_success=[m["attack_success"] for m in scored],
                lr_sweep_zero_shot_acc=[m["zero_shot_acc"] for m in scored],
            )
        results.append(CellResult(metrics, curves))
    return results
