"""The paper's findings beside the toy's numbers: a table computed from a results database.

Each ``Finding`` names what the paper states (with its number), the figure whose stored rows
measure it on the toy, and a ``measure(rows_for)`` that returns the toy's number in words and a
verdict by a rule stated in the table. Nothing here is typed by hand from a run: change a stored
row and the verdict follows. The toy needs far higher poison rates than CC3M (DESIGN.md), so the
rules compare shapes (thresholds, orderings, trends), not absolute rates.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from poisonclip.report.figure_registry import Table

if TYPE_CHECKING:
    from poisonclip.experiments.store import ResultRow

REPRODUCES, PARTLY, NOT = "reproduces", "partly", "does not reproduce"
SUCCESS = 0.5  # a mean ASR (or targeted success rate) at or above this counts as a working attack

RowsFor = Callable[[str], Sequence["ResultRow"]]  # figure name → the rows of the sweeps that list it


class NotMeasured(Exception):
    """The rows needed for a finding are not in the database (yet)."""


@dataclass(frozen=True)
class Finding:
    claim: str  # what the paper states
    paper: str  # the paper's number
    rule: str  # how the verdict is decided
    measure: Callable[[RowsFor], tuple[str, str]]  # → (the toy's measurement, verdict)


def _means(rows: Sequence[ResultRow], x: str, y: str, **where: object) -> dict:
    """{value of ``x``: mean of ``y``} over the rows whose cell matches ``where``."""
    groups: dict = {}
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            groups.setdefault(r.get(x), []).append(r.get(y))
    if not groups:
        raise NotMeasured
    return {k: statistics.fmean(v) for k, v in sorted(groups.items())}


def _need(rows: Sequence[ResultRow]) -> Sequence[ResultRow]:
    if not rows:
        raise NotMeasured
    return rows


def _backdoor_rate(rows_for: RowsFor) -> tuple[str, str]:
    rows = [r for r in _need(rows_for("fig2_right")) if r.get("poison_count") > 0]
    asr = _means(rows, "poison_count", "asr")
    rate = _means(rows, "poison_count", "poison_rate")
    natural = _means(rows, "poison_count", "natural_rate")
    working = [c for c, a in asr.items() if a >= SUCCESS]
    if not working:
        return f"ASR stays below {SUCCESS:.0%} up to {max(asr):,} poisons ({max(asr.values()):.2f})", NOT
    c = working[0]
    text = f"{c:,} poisons ({rate[c]:.2%}) → ASR {asr[c]:.2f} (natural rate {natural[c]:.2f})"
    return text, REPRODUCES if rate[c] <= 0.01 else PARTLY


def _targeted(rows_for: RowsFor) -> tuple[str, str]:
    rows = _need(rows_for("fig2_left"))
    success = _means(rows, "poisons_per_target", "zero_shot_success_rate")
    chance = success.get(0)
    working = [k for k, s in success.items() if k > 0 and s >= 0.4]
    base = f" (0 poisons: {chance:.2f})" if chance is not None else ""
    if not working:
        top = max(success)
        return f"{top} per target → {success[top]:.2f}{base}", NOT
    k = working[0]
    return f"{k} per target → {success[k]:.2f}{base}", REPRODUCES if k <= 4 else PARTLY


def _placement(rows_for: RowsFor) -> tuple[str, str]:
    rows = [r for r in _need(rows_for("fig4")) if r.get("poison_count") > 0]
    consistent = _means(rows, "poison_count", "zscore", placement="consistent", eval_placement="consistent")
    random = _means(rows, "poison_count", "zscore", placement="random", eval_placement="random")
    counts = sorted(set(consistent) & set(random))
    if not counts:
        raise NotMeasured
    low, high = counts[0], counts[-1]
    low_holds, high_holds = consistent[low] > random[low], random[high] > consistent[high]
    text = (
        f"z at {low:,}: consistent {consistent[low]:.2f} vs random {random[low]:.2f}; "
        f"at {high:,}: consistent {consistent[high]:.2f} vs random {random[high]:.2f}"
    )
    return text, REPRODUCES if low_holds and high_holds else PARTLY if low_holds or high_holds else NOT


def _data_size(rows_for: RowsFor) -> tuple[str, str]:
    rows = _need(rows_for("fig5_left"))
    counts = sorted({r.get("poison_count") for r in rows})
    if len(counts) < 2:
        raise NotMeasured
    few, many = (_means(rows, "data.num_train", "asr", poison_count=c) for c in (counts[0], counts[-1]))
    if len(few) < 2 or len(many) < 2:
        raise NotMeasured
    flat = min(many.values()) >= 0.8 * max(many.values()) and max(many.values()) >= SUCCESS
    largest = max(few)
    drops = few[largest] < 0.5 * max(few.values())
    text = (
        f"{counts[-1]} poisons: ASR {min(many.values()):.2f}-{max(many.values()):.2f} over "
        f"{min(many):,}-{max(many):,} pairs; {counts[0]} poisons: ASR {max(few.values()):.2f} at best, "
        f"{few[largest]:.2f} at {largest:,} pairs"
    )
    return text, REPRODUCES if flat and drops else PARTLY if flat or drops else NOT


def _model_size(rows_for: RowsFor) -> tuple[str, str]:
    rows = _need(rows_for("fig5_right"))
    by_size: dict[int, list[bool]] = {}
    names: dict[int, str] = {}
    for r in rows:
        by_size.setdefault(r.get("num_params_visual"), []).append(r.get("asr") >= SUCCESS)
        names[r.get("num_params_visual")] = r.get("train.model")
    sizes = sorted(by_size)
    if len(sizes) < 2:
        raise NotMeasured
    shares = [sum(by_size[s]) / len(by_size[s]) for s in sizes]
    text = "; ".join(f"{names[s]}: {sum(by_size[s])}/{len(by_size[s])} backdoored" for s in sizes)
    rising = all(a <= b for a, b in zip(shares, shares[1:], strict=False))
    if rising and shares[-1] == 1 and shares[0] < 1:
        return text, REPRODUCES
    return text, PARTLY if shares[-1] > shares[0] else NOT


def _probe_iff_zero_shot(rows_for: RowsFor) -> tuple[str, str]:
    points = []  # (what, zero-shot works, probe works)
    targeted = [r for r in rows_for("fig2_left") if r.get("poisons_per_target") > 0]
    if targeted:
        zs = _means(targeted, "poisons_per_target", "zero_shot_success_rate")
        probe = _means(targeted, "poisons_per_target", "probe_success_rate")
        points += [(f"targeted {k}/target", zs[k] >= SUCCESS, probe[k] >= SUCCESS) for k in zs]
    backdoor = [r for r in rows_for("fig2_right") if r.get("poison_count") > 0 and "probe_asr" in r.metrics]
    if backdoor:
        zs = _means(backdoor, "poison_count", "asr")
        probe = _means(backdoor, "poison_count", "probe_asr")
        points += [(f"backdoor {c}", zs[c] >= SUCCESS, probe[c] >= SUCCESS) for c in zs]
    if not points:
        raise NotMeasured
    disagree = [what for what, z, p in points if z != p]
    agree = len(points) - len(disagree)
    text = f"agree at {agree} of {len(points)} poison counts" + (
        f" (not at: {', '.join(disagree)})" if disagree else ""
    )
    return text, REPRODUCES if not disagree else PARTLY if agree >= 0.75 * len(points) else NOT


def _patch_size(rows_for: RowsFor) -> tuple[str, str]:
    rows = _need(rows_for("fig6"))
    asr = _means(rows, "patch_size", "asr")
    sizes = list(asr)
    if len(sizes) < 2:  # a sweep still running: one size says nothing about the trend
        raise NotMeasured
    text = ", ".join(f"{s}×{s}: {asr[s]:.2f}" for s in sizes) + " ASR"
    fails_small = asr[sizes[0]] < SUCCESS
    works_large = any(asr[s] >= SUCCESS for s in sizes[1:])
    return text, REPRODUCES if fails_small and works_large else NOT


def _separation(rows_for: RowsFor) -> tuple[str, str]:
    rows = _need(rows_for("fig3_right"))
    top = max(r.get("poison_count") for r in rows)
    group = [
        r for r in rows if r.get("poison_count") == top and r.get("eval_placement") == r.get("placement")
    ]
    group = _need(group)
    mean = {
        k: statistics.fmean(r.get(k) for r in group)
        for k in ("patched_pair_mean", "clean_pair_mean", "zscore")
    }
    text = (
        f"{top:,} poisons: patched pairs {mean['patched_pair_mean']:.2f} vs clean "
        f"{mean['clean_pair_mean']:.2f}, z {mean['zscore']:.2f}"
    )
    return text, REPRODUCES if mean["zscore"] >= 4 else PARTLY if mean["zscore"] >= 2 else NOT


def _same_label(rows_for: RowsFor, min_pairs: int = 100) -> tuple[str, str]:
    rows = _need(rows_for("fig3_left"))
    sums = {
        k: [sum(v) for v in zip(*(r.curves[k] for r in rows), strict=True)] for k in ("pairs", "same_label")
    }
    kept = [b for b, n in enumerate(sums["pairs"]) if n >= min_pairs]
    if len(kept) < 3:
        raise NotMeasured
    p = [sums["same_label"][b] / sums["pairs"][b] for b in kept]
    rho = _spearman(list(range(len(p))), p)
    text = f"P(same label) {p[0]:.3f} in the least similar bin → {p[-1]:.3f} in the most; Spearman {rho:.2f}"
    return text, REPRODUCES if rho >= 0.9 else PARTLY if rho >= 0.5 else NOT


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0.0] * len(v)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    return statistics.correlation(ranks(x), ranks(y))


FINDINGS: tuple[Finding, ...] = (
    Finding("backdoor with a tiny fraction of poisons (Fig 2 right)",
            "300 poisons (0.01% of CC3M) → 50% ASR",
            f"reproduces: mean ASR ≥ {SUCCESS:.0%} at a poison rate ≤ 1%; partly: at a higher rate",
            _backdoor_rate),
    Finding("targeted poisoning with a handful of poisons (Fig 2 left)",
            "3 poisons (0.0001% of CC3M) → 40% zero-shot success",
            "reproduces: ≥ 40% zero-shot success at ≤ 4 poisons per target; partly: at more",
            _targeted),
    Finding("consistent placement beats random at low counts, random overtakes at high (Fig 4)",
            "consistent z ≈ 2.5 at 75 poisons; random wins above ~300 (0.01%)",
            "reproduces: both orderings hold (matched test placement); partly: one",
            _placement),
    Finding("ASR flat in data size above a threshold count (Fig 5 left)",
            "300 poisons: ASR ~constant 50k-3M pairs; 75 poisons: drops at 2-3M",
            "reproduces: larger count flat (min ≥ 80% of max, max ≥ 50%) and smaller count drops "
            "below half its best at the largest size; partly: one of the two",
            _data_size),
    Finding("larger models backdoor more reliably (Fig 5 right)",
            "1M parameters never backdoored, 5M sometimes (z 0.3-5.4), 30M always (z 5.1-5.9)",
            f"reproduces: share of models with ASR ≥ {SUCCESS:.0%} never falls with size, the largest "
            "model always, the smallest not; partly: larger beats smallest",
            _model_size),
    Finding("linear probe vulnerable iff zero-shot is (Fig 2)",
            "the probe is vulnerable exactly when the zero-shot classifier is (§4.3)",
            f"per poison count, success ≥ {SUCCESS:.0%} under both or neither; reproduces: all "
            "agree; partly: ≥ 75%",
            _probe_iff_zero_shot),
    Finding("small patches fail, larger ones work (Fig 6)",
            "2×2 of 224×224 fails, 4×4 works, 16×16 best",
            f"reproduces: the smallest patch has ASR < {SUCCESS:.0%} and a larger one ≥ {SUCCESS:.0%}",
            _patch_size),
    Finding("patched pairs far more alike than clean pairs (Fig 3 right)",
            "0.78 vs ≈ 0.1, about 5 standard deviations",
            "reproduces: z ≥ 4 at the largest count; partly: z ≥ 2",
            _separation),
    Finding("image similarity predicts the same label (Fig 3 left)",
            "P(same label) rises exponentially with similarity",
            "Spearman correlation of P(same label) with similarity over bins of ≥ 100 pairs; "
            "reproduces: ≥ 0.9; partly: ≥ 0.5",
            _same_label),
)  # fmt: skip


def paper_vs_toy(rows_for: RowsFor) -> Table:
    """One row per ``FINDINGS`` entry: the paper's number, the toy's, the verdict and its rule. The
    toy is the synthetic data: rows of sweeps on a user's files are left out."""

    def toy_rows(figure: str) -> list[ResultRow]:
        return [r for r in rows_for(figure) if r.synthetic]

    rows = []
    for f in FINDINGS:
        try:
            measured, verdict = f.measure(toy_rows)
        except NotMeasured:
            measured, verdict = "not run yet", "—"
        rows.append((f.claim, f.paper, measured, verdict, f.rule))
    return Table(("finding", "paper", "toy (measured)", "verdict", "verdict rule"), tuple(rows))
