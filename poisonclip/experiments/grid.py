"""Experiment files: a TOML grid of cells × seeds, fully validated before any work starts.

An experiment file (see ``experiments/*.toml``)::

    name = "fig4"                 # default: the file name without .toml
    description = "..."
    figures = ["fig4"]            # report figures drawn from this sweep (grid.FIGURES)
    attack = "backdoor"           # a trial runner (poisonclip.experiments.runners)
    seeds = [0, 1, 2]             # or a count: seeds = 3 means [0, 1, 2]

    [data]                        # SyntheticConfig fields; or a user's files (data/files.DataFiles):
    num_train = [5000, 10000]     # train = "train.csv", test = "test.csv", image_size = 224, ...
    [train]                       # preset name + TrainConfig fields (not ``seed``: see ``seeds``)
    preset = "demo"
    model = ["toy-vit-w32", "toy-vit-w64"]
    [backdoor]                    # the attack's parameter fields (backdoor_trial.BackdoorParams), and
    poison_count = [25, 100]      # its trigger's parameters (experiments/backdoor_trial.py)
    eval_placement = ["consistent", "random"]
    [slurm]                       # submitit parameters, used by ``--executor slurm`` only
    timeout_min = 60

Any field may be a list: the grid is the product of all lists. A **cell** is one point of the
grid; a **trial** is one trained model: the cells that differ only in evaluation settings (e.g.
``eval_placement``), for one seed. Seed ``s`` sets the model initialisation and data order
(``TrainConfig.seed``), the poison selection and the random test-patch positions; the synthetic
data's own seed is ``[data] seed``. An attack's ``eval_templates`` defaults to the data's prompts
(``synthetic`` for the generated shapes; ``[data] templates`` for a user's files).

Results are keyed by ``Cell.key`` (a hash of the resolved cell config, seed excluded) and the seed,
so a cell shared by two experiment files is trained once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poisonclip.data.files import COMPUTED, DataConfig, DataFiles
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.experiments.runners import get_runner
from poisonclip.keys import config_dict, config_hash
from poisonclip.train.config import TrainConfig, load_preset
from poisonclip.train.model import check_pretrained, get_model_config, image_size_of

TOP_LEVEL_KEYS = ("name", "description", "figures", "attack", "seeds", "data", "train", "slurm")

# The figures poisonclip.report draws from stored results, in its order; ``figures = [...]`` names
# some of them. Listed here, below the report, so a file is checked before anything trains; the
# report's ``register_figure`` accepts only these names, and a test checks it registers them all.
FIGURES: tuple[str, ...] = (
    "fig2_left", "fig2_right", "fig3_left", "fig3_right", "asr_vs_rate", "fig4", "fig5_left", "fig5_right",
    "fig6", "defense_matrix", "detector_roc", "defense_cost", "defense_diagnostics", "cleanclip_lr",
    "triggers_z", "triggers_asr",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One grid point, i.e. what one result row describes (together with a seed)."""

    attack: str
    data: DataConfig
    train: TrainConfig  # its ``seed`` is unused: each trial's seed replaces it
    params: Any  # the attack's frozen parameter dataclass, e.g. backdoor_trial.BackdoorParams

    def to_dict(self) -> dict:
        """The resolved config as JSON-able dicts, seed excluded (it is the key's other half)."""
        train = config_dict(self.train)
        del train["seed"]
        return {
            "attack": self.attack,
            "data": config_dict(self.data),
            "train": train,
            "params": config_dict(self.params),
        }

    @property
    def key(self) -> str:
        return config_hash(self.to_dict())

    @property
    def train_key(self) -> str:
        """Equal for cells whose models are trained identically (they differ in evaluation only)."""
        config = self.to_dict()
        config["data"].pop("templates", None)  # a user's data's prompts: evaluation only
        return config_hash({**config, "params": self.params.training_params()})


@dataclass(frozen=True)
class Trial:
    """One model to train and evaluate: cells that differ only in evaluation settings, one seed."""

    cells: tuple[Cell, ...]
    seed: int

    @property
    def attack(self) -> str:
        return self.cells[0].attack

    @property
    def train_key(self) -> str:
        return self.cells[0].train_key

    @property
    def label(self) -> str:
        return f"{self.train_key}/seed{self.seed}"


@dataclass(frozen=True)
class Sweep:
    """A validated experiment file: its cells and seeds (trials = models × seeds)."""

    name: str
    description: str
    attack: str
    figures: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    slurm: tuple[tuple[str, Any], ...]  # submitit parameters, as sorted items (frozen)
    source: str  # the experiment file's text, stored with the results

    def trials(self) -> list[Trial]:
        """Every (model, seed), seed-major: a partial sweep already covers every grid point."""
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.train_key, []).append(cell)
        return [Trial(tuple(cells), seed) for seed in self.seeds for cells in groups.values()]


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate an experiment file; any problem is one ``UsageError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"experiment file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from err
    if not document:  # would run one trial of every default, which nobody means
        raise UsageError(f"{path}: empty experiment file; give at least the grid, e.g. [backdoor]")
    return parse_sweep(document, default_name=path.stem, source=text, where=str(path))


def parse_sweep(document: Mapping[str, Any], default_name: str, source: str = "", where: str = "") -> Sweep:
    """Validate a parsed experiment file and expand its grid (see the module docstring)."""
    where = where or default_name
    attack = document.get("attack", "backdoor")
    if not isinstance(attack, str):
        raise UsageError(f"{where}: attack must be a string")
    try:
        runner = get_runner(attack)
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from err
    if unknown := sorted(set(document) - set(TOP_LEVEL_KEYS) - {attack}):
        raise UsageError(f"{where}: unknown keys {unknown}; allowed: {[*TOP_LEVEL_KEYS, attack]}")

    name = _scalar(document, "name", str, default_name, where)
    description = _scalar(document, "description", str, "", where)
    figures = document.get("figures", [])
    if not isinstance(figures, list) or not all(isinstance(f, str) for f in figures):
        raise UsageError(f"{where}: figures must be a list of figure names")
    if unknown := sorted(set(figures) - set(FIGURES)):
        raise UsageError(f"{where}: unknown figures {unknown}; available: {list(FIGURES)}")
    seeds = _seeds(document.get("seeds", 1), where)
    slurm = _table(document, "slurm", where)

    train_table = dict(_table(document, "train", where))
    preset = train_table.pop("preset", "demo")
    if not isinstance(preset, str):
        raise UsageError(f"{where}: [train] preset must be a string")
    if "seed" in train_table:
        raise UsageError(f"{where}: [train] seed is not allowed: the top-level `seeds` sets it per trial")
    try:
        base_train = load_preset(preset)
    except UsageError as err:
        raise UsageError(f"{where}: [train] {err}") from err

    data_table = _table(document, "data", where)
    data_cls = _data_class(data_table, where)
    sections = (
        ("data", data_cls, data_table),
        ("train", TrainConfig, train_table),
        (attack, runner.params, _table(document, attack, where)),
    )
    axes = [
        (section, field, values)
        for section, cls, table in sections
        for field, values in _fields(section, cls, table, where).items()
    ]
    cells: dict[str, Cell] = {}
    for combination in itertools.product(*(values for _, _, values in axes)):
        chosen: dict[str, dict[str, Any]] = {section: {} for section, _, _ in sections}
        for (section, field, _), value in zip(axes, combination, strict=True):
            chosen[section][field] = value
        cell = _make_cell(attack, data_cls, runner.params, base_train, chosen, where)
        cells.setdefault(cell.key, cell)
    return Sweep(
        name=name,
        description=description,
        attack=attack,
        figures=tuple(figures),
        seeds=seeds,
        cells=tuple(cells.values()),
        slurm=tuple(sorted(slurm.items())),
        source=source,
    )


def _data_class(table: Mapping[str, Any], where: str) -> type[SyntheticConfig] | type[DataFiles]:
    """``[data]`` is a user's files (``DataFiles``) if it has a key only they have, else the
    synthetic data's config; either way an unknown key is an error that names both key sets."""
    synthetic = {f.name for f in dataclasses.fields(SyntheticConfig)}
    computed = {f.name for f in dataclasses.fields(DataFiles) if f.metadata.get(COMPUTED)}
    files = {f.name for f in dataclasses.fields(DataFiles)} - computed
    if unknown := sorted(set(table) - synthetic - files - computed):
        raise UsageError(
            f"{where}: [data] unknown keys {unknown}; the synthetic data's: {sorted(synthetic)}; "
            f"your own files': {sorted(files)}"
        )
    if not set(table) & ((files | computed) - synthetic):  # num_train and image_size: both kinds' keys
        return SyntheticConfig
    if missing := [k for k in ("train", "test", "image_size") if k not in table]:
        raise UsageError(f"{where}: [data] names your own files but not {', '.join(missing)}")
    if given := sorted(set(table) & computed):
        raise UsageError(f"{where}: [data] {', '.join(given)}: computed from the files, not given")
    if mixed := sorted(set(table) & (synthetic - files)):
        raise UsageError(
            f"{where}: [data] {', '.join(mixed)}: a key of the synthetic data, not of your files"
        )
    return DataFiles


def _make_cell(
    attack: str,
    data_cls: type[SyntheticConfig] | type[DataFiles],
    params_cls: type,
    base_train: TrainConfig,
    chosen: dict[str, dict],
    where: str,
) -> Cell:
    """Build one cell, checking every value (dataclass checks, then cross-field checks)."""
    data_values, train_values, params_values = chosen["data"], chosen["train"], chosen[attack]
    point = ", ".join(f"{k}={v!r}" for values in chosen.values() for k, v in values.items())
    try:
        data = data_cls(**data_values)
        if isinstance(data, DataFiles):
            data = data.fingerprinted()  # the files as they are now: an edited CSV is a new cell
        train = base_train.replace(**train_values)
        if "eval_templates" in {f.name for f in dataclasses.fields(params_cls)}:
            params_values = {"eval_templates": data.templates, **params_values}  # the data's prompts
        params = _params(attack, params_cls, params_values)
        model_image_size = image_size_of(get_model_config(train.model))
        if model_image_size != data.image_size:  # data.stored_size may differ: it is read at image_size
            raise UsageError(
                f"model {train.model!r} takes {model_image_size}px images but data.image_size "
                f"is {data.image_size}"
            )
        if train.pretrained:  # an unknown tag or unloadable file fails here, not in a worker
            check_pretrained(train.model, train.pretrained)
        if train.batch_size > data.num_train:
            raise UsageError(f"batch_size {train.batch_size} exceeds num_train {data.num_train}")
        params.check(data)
    except UsageError as err:
        raise UsageError(f"{where}: {err} (at {point})" if point else f"{where}: {err}") from err
    return Cell(attack, data, train, params)


def _open(cls: type) -> bool:
    """Whether a parameter class takes keys beyond its fields (a trigger's parameters), checked
    per grid point by its ``from_table`` (``experiments/backdoor_trial.TriggerKeys``)."""
    return hasattr(cls, "from_table")


def _params(section: str, cls: type, values: dict[str, Any]) -> Any:
    if not _open(cls):
        return cls(**values)
    try:
        return cls.from_table(values)
    except UsageError as err:
        raise UsageError(f"[{section}] {err}") from err


def _fields(section: str, cls: type, table: Mapping[str, Any], where: str) -> dict[str, list]:
    """Each key of ``table`` as a list of values (a scalar is a one-value axis), type-checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    if (unknown := sorted(set(table) - fields)) and not _open(cls):
        raise UsageError(f"{where}: [{section}] unknown keys {unknown}; allowed: {sorted(fields)}")
    axes = {}
    for key, value in table.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UsageError(f"{where}: [{section}] {key} is an empty list")
        for v in values:
            if key in hints and not _has_type(v, hints[key]):
                raise UsageError(f"{where}: [{section}] {key} = {v!r} is not of type {hints[key]}")
        if hints.get(key) is float:  # lr = 1 and lr = 1.0 are one config, so one hash
            values = [float(v) for v in values]
        if len({json.dumps(v) for v in values}) != len(values):
            raise UsageError(f"{where}: [{section}] {key} lists a value twice")
        axes[key] = values
    return axes


def _has_type(value: object, hint: object) -> bool:
    if isinstance(value, bool):  # TOML booleans are not numbers
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    # Other hints (none in our configs today) are left to the dataclass's own checks.
    return isinstance(value, hint) if isinstance(hint, type) else True


def _table(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    table = document.get(key, {})
    if not isinstance(table, dict):
        raise UsageError(f"{where}: {key} must be a table ([{key}])")
    return table


def _scalar(document: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = document.get(key, default)
    if not isinstance(value, kind):
        raise UsageError(f"{where}: {key} must be a {kind.__name__}")
    return value


def _seeds(value: object, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UsageError(f"{where}: seeds = {value}: need at least one seed")
        return tuple(range(value))
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        raise UsageError(f"{where}: seeds must be a count or a non-empty list of integers >= 0")
    if len(set(value)) != len(value):
        raise UsageError(f"{where}: seeds lists a seed twice")
    return tuple(value)
