"""Sweeps on a user's own files: ``[data] train = ..., test = ...`` instead of the synthetic set."""

import tomllib

import pytest

from poisonclip.cli import main
from poisonclip.data.cache import data_dir
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.experiments.grid import parse_sweep
from poisonclip.experiments.store import ResultStore
from tests.sweep_files import assert_refused, write

pytestmark = pytest.mark.usefixtures("one_thread")

SYNTHETIC = SyntheticConfig(num_train=300, num_test=120, num_shapes=10)
GRID = '[train]\npreset = "tiny"\n[backdoor]\npoison_count = 20\n'


def files_table(root, **extra) -> str:
    """``[data]`` naming the CSVs that ``data synth`` wrote under ``root``."""
    values = {
        "train": str(root / "train.csv"),
        "test": str(root / "test.csv"),
        "classnames_file": str(root / "classnames.txt"),
        "image_size": 32,
        **extra,
    }
    lines = [
        f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()
    ]
    return "[data]\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """The synthetic set's cache folder, written by a sweep over it (one trial), and that sweep's db."""
    tmp = tmp_path_factory.mktemp("own")
    data = "[data]\n" + "".join(
        f"{k} = {v}\n" for k, v in (("num_train", 300), ("num_test", 120), ("num_shapes", 10))
    )
    path = write(tmp, data + GRID, "synthetic.toml")
    db = tmp / "synthetic.sqlite"
    assert main(["sweep", "run", str(path), "--db", str(db), "--data-root", str(tmp / "data"),
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    return data_dir(tmp / "data", SYNTHETIC), db


def test_a_sweep_on_the_same_data_as_files_measures_exactly_what_the_synthetic_sweep_does(
    synthetic_root, tmp_path
):
    root, synthetic_db = synthetic_root
    # The synthetic data's own prompts: with them, nothing but the way the data is named differs.
    path = write(tmp_path, files_table(root, templates="synthetic") + GRID, "files.toml")
    db = tmp_path / "files.sqlite"
    assert main(["sweep", "run", str(path), "--db", str(db), "--workers", "1", "--no-progress"]) == 0
    [ours] = ResultStore(db, read_only=True).rows()
    [theirs] = ResultStore(synthetic_db, read_only=True).rows()
    assert ours.cell["data.train"] == str(root / "train.csv") and len(ours.cell["data.fingerprint"]) == 16
    assert ours.cell["eval_templates"] == "synthetic"
    for metric in ("asr", "zscore", "natural_rate", "zero_shot_acc", "probe_acc", "poison_rate"):
        assert ours.metrics[metric] == theirs.metrics[metric], metric


def test_eval_templates_default_to_the_datas_prompts(synthetic_root):
    root, _ = synthetic_root
    [cell] = parse_sweep(tomllib.loads(files_table(root) + GRID), "own").cells
    assert cell.data.templates == "openai" and cell.params.eval_templates == "openai"
    text = files_table(root) + GRID + 'eval_templates = "synthetic"\n'
    [cell] = parse_sweep(tomllib.loads(text), "own").cells
    assert cell.params.eval_templates == "synthetic"  # the attack's own setting wins
    # The synthetic data keeps its prompts, and its cells their keys.
    [cell] = parse_sweep(tomllib.loads(GRID), "synthetic").cells
    assert cell.params.eval_templates == "synthetic" and "eval_templates" not in cell.to_dict()["params"]


def test_an_edited_csv_is_a_new_cell_and_a_planned_trial_refuses_it(synthetic_root, tmp_path):
    root, _ = synthetic_root
    copy = tmp_path / "data"
    copy.mkdir()
    for name in ("train.csv", "test.csv", "classnames.txt"):
        (copy / name).write_bytes((root / name).read_bytes())
    (copy / "images").symlink_to(root / "images")
    [before] = parse_sweep(tomllib.loads(files_table(copy) + GRID), "own").cells
    assert before.data.num_train == 300 and before.data.num_test == 120 and len(before.data.classnames) == 10
    lines = (copy / "train.csv").read_text().splitlines(keepends=True)
    (copy / "train.csv").write_text("".join(lines[:-1]))  # one pair fewer
    [after] = parse_sweep(tomllib.loads(files_table(copy) + GRID), "own").cells
    assert after.key != before.key and after.data.num_train == 299
    with pytest.raises(UsageError, match="changed since the sweep was planned"):
        before.data.check_unchanged()


def test_class_names_come_from_the_test_labels_when_they_are_names(synthetic_root, tmp_path):
    root, _ = synthetic_root
    names = (root / "classnames.txt").read_text().splitlines()
    rows = (root / "test.csv").read_text().splitlines()
    header, body = rows[0], [r.split("\t") for r in rows[1:]]
    named = tmp_path / "test.csv"
    named.write_text("\n".join([header, *("\t".join([str(root / p), t, names[int(y)]]) for p, t, y in body)]))
    text = files_table(root, test=str(named)).replace(f'classnames_file = "{root / "classnames.txt"}"\n', "")
    [cell] = parse_sweep(tomllib.loads(text + GRID), "own").cells
    assert list(cell.data.classnames) == sorted(set(names[int(y)] for _, _, y in body))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("image_size = 32\n", ""), "names your own files but not image_size"),
        (
            lambda t: t.replace("[train]", 'fingerprint = "0"\n[train]'),
            "fingerprint is computed from the files",
        ),
        (lambda t: t.replace("classnames_file =", "# classnames_file ="), "its labels are class indices"),
        (
            lambda t: t.replace("poison_count = 20", 'target_label = "dog"'),
            "'dog' is not a class of the data",
        ),
        (
            lambda t: t.replace("image_size = 32", "image_size = 64"),
            "takes 32px images but data.image_size is 64",
        ),
        (lambda t: t.replace("test.csv", "nowhere.csv"), "dataset file not found"),
    ],
)
def test_bad_own_data_is_one_error_line_before_any_work(synthetic_root, tmp_path, capsys, edit, message):
    root, _ = synthetic_root
    assert_refused(tmp_path, capsys, edit(files_table(root) + GRID), message)
