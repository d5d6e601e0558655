"""Report figures of the attack × defense matrix (issue 9), from rows of the ``defense`` runner.

* ``defense_matrix``: heat-maps, attack configuration × defense, of the attack's success, the
  clean zero-shot accuracy and (backdoor) the z-score, mean ± std over seeds;
* ``detector_roc``: ROC curves of every detector on the undefended models, one panel per attack;
* ``defense_cost``: each defense's wall-clock relative to undefended training;
* ``cleanclip_lr``: CleanCLIP's whole learning-rate sweep (chosen on clean validation loss);
* ``defense_diagnostics``: SafeCLIP's safe fraction per epoch; RoCLIP's matches per matching epoch
  (own class, random start) and its clean accuracy per epoch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from poisonclip.experiments.poisoning import keys_of_other_attacks, list_matrix_attacks
from poisonclip.report.figure_registry import FigureSpec, Table, register_figure
from poisonclip.report.formatting import TRIGGER_KEYS, describe, mean_pm_std, sort_key, varying_keys
from poisonclip.report.plotting import place_legend, pyplot, save_figure, subplots

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow

DEFENSE_ORDER = ("none", "filter", "cleanclip", "roclip", "safeclip")  # columns, then by spec


def _attack_label(row: ResultRow, keys: Sequence[str]) -> str:
    """The attack configuration of a row: its type and the (non-defense) settings that vary."""
    # settings of another attack are never shown on this attack's rows, where they do nothing
    attack = row.get("attack_type")
    unused = keys_of_other_attacks(attack) if attack in list_matrix_attacks() else ()
    details = ", ".join(describe(k, row.get(k)) for k in keys if k not in unused and k in row.cell)
    return f"{row.get('attack_type')}" + (f" ({details})" if details else "")


def _attack_keys(rows: Sequence[ResultRow]) -> list[str]:
    """The settings that tell attack rows apart; with a trigger axis, a trigger's own parameters
    only where they vary among that trigger's rows (its name says the rest)."""
    exclude = ("attack", "attack_type", "defense")
    keys = varying_keys(rows, exclude=exclude)
    if "trigger" not in keys:
        return keys
    by_trigger: dict[str, list[ResultRow]] = {}
    for r in rows:
        by_trigger.setdefault(r.cell.get("trigger"), []).append(r)
    within = {k for group in by_trigger.values() for k in varying_keys(group, exclude=exclude)}
    return [k for k in keys if k not in TRIGGER_KEYS or k in within]


def _defense_rank(spec: str) -> tuple:
    name = spec.split(":")[0].split("(")[0]
    return (DEFENSE_ORDER.index(name) if name in DEFENSE_ORDER else len(DEFENSE_ORDER), spec)


def _by_attack_and_defense(rows: Sequence[ResultRow]) -> tuple[list[str], list[str], dict]:
    """(attack labels, defense specs, {(attack, defense): rows})."""
    keys = _attack_keys(rows)
    cells: dict[tuple[str, str], list[ResultRow]] = {}
    for r in rows:
        cells.setdefault((_attack_label(r, keys), r.get("defense")), []).append(r)
    attacks = sorted({a for a, _ in cells}, key=lambda a: sort_key((a,)))
    defenses = sorted({d for _, d in cells}, key=_defense_rank)
    return attacks, defenses, cells


def _one_row_per_model(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Detection metrics belong to the undefended model of a trial: one row per (model, seed)."""
    seen: dict[tuple[str, int], ResultRow] = {}
    for r in rows:
        seen.setdefault((r.train_hash, r.seed), r)
    return list(seen.values())


def _render_matrix(rows: Sequence[ResultRow], path: Path) -> Table:
    attacks, defenses, cells = _by_attack_and_defense(rows)
    panels = [("attack_success", "attack success (ASR / targeted success)"),
              ("zero_shot_acc", "clean zero-shot top-1")]  # fmt: skip
    if any("zscore" in r.metrics for r in rows):
        panels.append(("zscore", "backdoor z-score"))
    fig, axes = subplots(len(panels), 1.4 * len(defenses) + 2.5, 0.6 * len(attacks) + 1.6, columns=1)
    for ax, (metric, title) in zip(axes, panels, strict=True):
        means = [[_mean(cells, a, d, metric) for d in defenses] for a in attacks]
        image = ax.imshow(means, cmap="viridis", aspect="auto")
        for i, a in enumerate(attacks):
            for j, d in enumerate(defenses):
                if _has(cells, a, d, metric):
                    text = mean_pm_std([r.metrics[metric] for r in cells[a, d]])
                    colour = "black" if image.norm(means[i][j]) > 0.6 else "white"  # legible on yellow
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks(range(len(defenses)), defenses, rotation=20, ha="right", fontsize=8)
        ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
        ax.set_title(f"{title}, mean ± std over seeds", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03)
    save_figure(fig, path)
    table_rows = []
    for a in attacks:
        for d in defenses:
            group = cells.get((a, d))
            if not group:
                continue
            flagged = [r.metrics["poisons_flagged"] / r.metrics["num_poisons"] for r in group
                       if "poisons_flagged" in r.metrics]  # fmt: skip
            table_rows.append(
                (
                    a,
                    d,
                    str(len(group)),
                    mean_pm_std([r.metrics["attack_success"] for r in group], 3),
                    mean_pm_std([r.metrics["zero_shot_acc"] for r in group], 3),
                    mean_pm_std([r.metrics["zscore"] for r in group]) if _has(cells, a, d, "zscore") else "—",
                    mean_pm_std([r.metrics["defense_cost"] for r in group]),
                    mean_pm_std(flagged, 3) if flagged else "—",
                )
            )
    columns = ("attack", "defense", "models", "attack success", "zero-shot top-1", "z-score",
               "cost (× undefended training)", "poisons flagged")  # fmt: skip
    return Table(columns, tuple(table_rows))


def _mean(cells: dict, attack: str, defense: str, metric: str) -> float:
    """Mean of ``metric`` over the seeds of a matrix cell; NaN (blank) where it does not apply."""
    if not _has(cells, attack, defense, metric):
        return float("nan")
    return statistics.fmean(r.metrics[metric] for r in cells[attack, defense])


def _has(cells: dict, attack: str, defense: str, metric: str) -> bool:
    group = cells.get((attack, defense))
    return bool(group) and all(metric in r.metrics for r in group)


def _detectors(rows: Sequence[ResultRow]) -> list[str]:
    return sorted(key[len("roc_") :] for key in rows[0].curves if key.startswith("roc_") and key != "roc_fpr")


def _render_roc(rows: Sequence[ResultRow], path: Path) -> Table:
    models = _one_row_per_model(rows)
    keys = _attack_keys(models)
    attacks: dict[str, list[ResultRow]] = {}
    for r in models:
        attacks.setdefault(_attack_label(r, keys), []).append(r)
    names = _detectors(models)
    fig, axes = subplots(len(attacks), 4.6, 4.2)
    table_rows = []
    for ax, attack in zip(axes, sorted(attacks, key=lambda a: sort_key((a,))), strict=True):
        group = attacks[attack]
        fpr = group[0].curves["roc_fpr"]
        for name in names:
            tpr = [
                statistics.fmean(values)
                for values in zip(*(r.curves[f"roc_{name}"] for r in group), strict=True)
            ]
            auc = mean_pm_std([r.metrics[f"detect_{name}_roc_auc"] for r in group])
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc})")
            table_rows.append(
                (
                    attack,
                    name,
                    str(len(group)),
                    *(mean_pm_std([r.metrics[f"detect_{name}_{m}"] for r in group], 3)
                      for m in ("roc_auc", "pr_auc", "fpr_at_95_recall", "roc_auc_shuffled")),
                )
            )  # fmt: skip
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        ax.set_title(f"{attack}\n{len(group)} undefended models", fontsize=9)
        ax.set_xlabel("false-positive rate (clean pairs flagged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")  # inside: panels sit side by side
    axes[0].set_ylabel("true-positive rate (poisons flagged)")
    save_figure(fig, path)
    columns = ("attack", "detector", "models", "ROC-AUC", "PR-AUC", "FPR at 95% recall",
               "ROC-AUC, shuffled labels")  # fmt: skip
    return Table(columns, tuple(table_rows))


def _render_cost(rows: Sequence[ResultRow], path: Path) -> Table:
    attacks, defenses, cells = _by_attack_and_defense(rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(defenses) * max(1, len(attacks)) / 2 + 3, 4))
    width = 0.8 / len(attacks)
    table_rows = []
    for i, a in enumerate(attacks):
        xs, means, stds = [], [], []
        for j, d in enumerate(defenses):
            if (a, d) not in cells:
                continue
            costs = [r.metrics["defense_cost"] for r in cells[a, d]]
            xs.append(j + (i - (len(attacks) - 1) / 2) * width)
            means.append(statistics.fmean(costs))
            stds.append(statistics.stdev(costs) if len(costs) > 1 else 0.0)
            seconds = [r.metrics["defense_seconds"] for r in cells[a, d]]
            undefended = [r.metrics["undefended_train_seconds"] for r in cells[a, d]]
            table_rows.append((a, d, str(len(costs)), mean_pm_std(seconds, 0), mean_pm_std(undefended, 0),
                               mean_pm_std(costs)))  # fmt: skip
        ax.bar(xs, means, width, yerr=stds, label=a, capsize=3)
    ax.axhline(1, color="grey", ls=":", label="one undefended training")
    ax.set_xticks(range(len(defenses)), defenses, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("defense wall-clock ÷ undefended training")
    ax.grid(alpha=0.3, axis="y")
    place_legend(ax)
    save_figure(fig, path)
    columns = (
        "attack",
        "defense",
        "models",
        "defense seconds",
        "undefended training seconds",
        "relative cost",
    )
    return Table(columns, tuple(table_rows))


def _render_cleanclip_lr(rows: Sequence[ResultRow], path: Path) -> Table:
    swept = [r for r in rows if "lr_sweep_lr" in r.curves]
    keys = _attack_keys(swept)
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for r in swept:
        groups.setdefault((_attack_label(r, keys), r.get("defense")), []).append(r)
    panels = (
        ("lr_sweep_validation_loss", "clean validation loss (chooses the lr)"),
        ("lr_sweep_attack_success", "attack success"),
        ("lr_sweep_zero_shot_acc", "clean zero-shot top-1"),
    )
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))  # own y scales
    table_rows = []
    for (attack, defense), group in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        lrs = group[0].curves["lr_sweep_lr"]
        for ax, (key, title) in zip(axes, panels, strict=True):
            per_lr = list(zip(*(r.curves[key] for r in group), strict=True))
            ax.errorbar(lrs, [statistics.fmean(v) for v in per_lr],
                        [statistics.stdev(v) if len(v) > 1 else 0 for v in per_lr], marker="o", capsize=3,
                        label=f"{attack}, {defense}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("fine-tuning learning rate")
            ax.grid(alpha=0.3)
        chosen = [r.metrics["chosen_lr"] for r in group]
        for i, lr in enumerate(lrs):
            table_rows.append(
                (
                    attack,
                    defense,
                    f"{lr:g}",
                    f"{sum(c == lr for c in chosen)} of {len(group)}",
                    *(mean_pm_std([r.curves[key][i] for r in group], 3) for key, _ in panels),
                )
            )
    place_legend(axes[-1])
    save_figure(fig, path)
    columns = ("attack", "defense", "lr", "chosen", "validation loss", "attack success", "zero-shot top-1")
    return Table(columns, tuple(table_rows))


DIAGNOSTIC_PANELS = (  # (curve over epochs, its x curve or None for 1..n, panel title)
    ("safe_fractions", None, "SafeCLIP: safe fraction per main epoch"),
    ("matching_own_class_share", "matching_epoch", "RoCLIP: matched pool caption names the image's class"),
    ("matching_random_share", "matching_epoch", "RoCLIP: matched to the pool's random start"),
    ("zero_shot_acc_per_epoch", None, "RoCLIP: clean zero-shot top-1 after each epoch"),
)


def _render_diagnostics(rows: Sequence[ResultRow], path: Path) -> Table:
    keys = _attack_keys(rows)
    fig, axes = pyplot().subplots(1, len(DIAGNOSTIC_PANELS), figsize=(4.2 * len(DIAGNOSTIC_PANELS), 3.6))
    table_rows = []
    for ax, (key, x_key, title) in zip(axes, DIAGNOSTIC_PANELS, strict=True):
        groups: dict[tuple[str, str], list[ResultRow]] = {}
        for r in rows:
            if key in r.curves:
                groups.setdefault((_attack_label(r, keys), r.get("defense")), []).append(r)
        for (attack, defense), group in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
            values = list(zip(*(r.curves[key] for r in group), strict=True))  # per epoch, over seeds
            xs = group[0].curves[x_key] if x_key else list(range(1, len(values) + 1))
            ax.plot(xs, [statistics.fmean(v) for v in values], marker="o", label=f"{attack}, {defense}")
            table_rows.extend(
                (title, attack, defense, str(int(x)), str(len(group)), mean_pm_std(list(v), 3))
                for x, v in zip(xs, values, strict=True)
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[1]]
    if labelled:  # a sweep without RoCLIP (or SafeCLIP) leaves its panels empty
        place_legend(labelled[-1])
    save_figure(fig, path)
    return Table(("quantity", "attack", "defense", "epoch", "models", "mean ± std"), tuple(table_rows))


_MATRIX_NOTE = (
    "Every defense of an attack configuration and seed starts from the same poisoned data and, where "
    "it needs one, the same undefended model (the 'none' column), so columns differ by the defense "
    "alone. Attack success is the backdoor ASR (patched non-target test images classified as the "
    "target) or, for the targeted attack, the fraction of targets x' classified as y' (zero-shot)."
)

register_figure(
    FigureSpec(
        "defense_matrix",
        "Attack × defense matrix — attack success, clean accuracy and z-score",
        f"Heat-maps over attack configurations (rows) and defenses (columns), mean ± std over seeds. "
        f"{_MATRIX_NOTE} filter:<detector>@x% drops the top x% of that detector's ranking (on the "
        "undefended model) and retrains; cleanclip fine-tunes the undefended model on clean pairs; "
        "roclip and safeclip train from scratch. The table adds each defense's cost and the fraction "
        "of poisons it flagged (dropped, or left 'risky' at SafeCLIP's last split).",
        _render_matrix,
    )
)
register_figure(
    FigureSpec(
        "detector_roc",
        "Attack × detector — ROC curves of the poison detectors",
        "True-positive rate (poisons flagged) against false-positive rate (clean pairs flagged) of "
        "every detector, ranking the training set of the undefended model (mean over seeds; one "
        "panel per attack configuration); the dotted line is chance. The table adds PR-AUC (chance: "
        "the poison rate), the false-positive rate at 95% recall, and ROC-AUC against shuffled "
        "labels, which must sit near 0.5 since detectors never read the manifest. Huang et al. "
        "(ICLR'25) report sparser neighbourhoods for CLIP backdoor poisons (SLOF and DAO flag them), "
        "scoring each pair against the other pairs of its shuffled batch (their protocol, the "
        "detectors' default here); '<name>-all' is the same detector against all training pairs, "
        "where a poison cluster larger than k shows k-distance and LID below 0.5 instead.",
        _render_roc,
    )
)
register_figure(
    FigureSpec(
        "defense_cost",
        "Attack × defense — cost relative to undefended training",
        "Wall-clock of each defense divided by that of training the undefended model in the same "
        "trial (mean ± std over seeds). 'none' costs 0; filter = scoring + retraining; cleanclip = "
        "fine-tuning at every learning rate of its sweep (on top of the undefended training it "
        "needs); roclip and safeclip replace the undefended training. Timings come from sweep "
        "workers that may share the machine: compare within a trial, not across machines.",
        _render_cost,
    )
)
register_figure(
    FigureSpec(
        "defense_diagnostics",
        "Attack × from-scratch defense — SafeCLIP's split and RoCLIP's matches, epoch by epoch",
        "Per epoch, mean over seeds: SafeCLIP's safe fraction in each main epoch (the first from its "
        "2-Gaussian split, then growing); for each of RoCLIP's matching epochs (counted from 1, as "
        "theirs) the share of images matched to a pool caption that names the image's own class "
        "(chance ≈ 1/classes) and the share matched to the pool's random start; and RoCLIP's clean "
        "zero-shot accuracy after every epoch. Diagnostics only: no defense reads them.",
        _render_diagnostics,
    )
)
register_figure(
    FigureSpec(
        "cleanclip_lr",
        "Attack × CleanCLIP learning rate — the whole sweep",
        "CleanCLIP fine-tunes the undefended model once per learning rate and keeps the one with "
        "the lowest CLIP loss on held-out clean pairs — never an attack metric. All rates are shown "
        "(mean ± std over seeds) with how often each was chosen. Published setting: lr 1e-5 for a "
        "pretrained RN50; the toy model was trained at 1e-3.",
        _render_cleanclip_lr,
    )
)
