"""Report figures of the trigger sweep (``experiments/triggers.toml``, issue 18): the backdoor's
z-score and ASR against the number of poisons, one line per trigger. Not figures of the paper,
which measures its checkerboard only."""

from __future__ import annotations

from poisonclip.report.figure_registry import FigureSpec, register_figure
from poisonclip.report.formatting import TRIGGER_KEYS
from poisonclip.report.line_plot import ASR_CHANCE, TOY_RATES, Z_CHANCE, LinePlot, count_tick

_CAPTION = (
    "Each trigger at its paper's settings (README 'Backdoor triggers'); the test images carry it as "
    "the poisons do. Mean ± std over seeds; a clean model (0 poisons) is drawn as a band per trigger: "
    "a whole-image trigger (blended, sig, wanet, nashville) changes every test image alike, so its z "
    "on a clean model need not be 0."
)

for metric, label, chance in (
    ("zscore", "backdoor z-score", Z_CHANCE),
    ("asr", "attack success rate", ASR_CHANCE),
):
    register_figure(
        FigureSpec(
            f"triggers_{'z' if metric == 'zscore' else metric}",
            f"Attack triggers — {label} vs poisons, one line per trigger (not a figure of the paper)",
            f"{_CAPTION} {chance} {TOY_RATES}",
            LinePlot(
                "poison_count",
                metric,
                "poisons added (and poison rate)",
                label,
                series=("trigger",),
                explained=TRIGGER_KEYS,  # one line per trigger
                log_x=True,
                tick=count_tick,
            ),
        )
    )
