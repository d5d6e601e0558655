"""Sweeps on a user's own files: ``[data] train = ..., test = ...`` instead of the synthetic set."""

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.data import files
from poisonclip.data.cache import data_dir
from poisonclip.data.files import load_files
from poisonclip.data.imagefolder import imagefolder_files
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.data.wds import csv_to_shards
from poisonclip.errors import UsageError
from poisonclip.evaluate.suite import evaluate_backdoor
from poisonclip.experiments import backdoor_trial
from poisonclip.experiments.grid import parse_sweep
from poisonclip.experiments.runners import CellResult
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import figure_rows
from poisonclip.report.figure_registry import get_figure
from poisonclip.report.findings import paper_vs_toy
from tests.sweep_files import assert_refused, write

pytestmark = pytest.mark.usefixtures("one_thread")

SYNTHETIC = SyntheticConfig(num_train=300, num_test=120, num_shapes=10)
GRID = '[train]\npreset = "tiny"\n[backdoor]\npoison_count = 20\n'
FIGURES = 'figures = ["fig2_right"]\n'


def files_table(root, **extra) -> str:
    """``[data]`` naming the CSVs and class names of the synthetic data's folder ``root``."""
    values = {
        "train": str(root / "train.csv"),
        "test": str(root / "test.csv"),
        "classnames_file": str(root / "classnames.txt"),
        "image_size": 32,
        **extra,
    }
    return "[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def run(path, db) -> None:
    assert main(["sweep", "run", str(path), "--db", str(db), "--data-root", str(path.parent / "data"),
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """The synthetic data's folder, written by a sweep over it (one trial), and that sweep's db."""
    tmp = tmp_path_factory.mktemp("own")
    data = "[data]\nnum_train = 300\nnum_test = 120\nnum_shapes = 10\n"
    db = tmp / "synthetic.sqlite"
    run(write(tmp, FIGURES + data + GRID, "synthetic.toml"), db)
    return data_dir(tmp / "data", SYNTHETIC), db


def test_a_sweep_on_the_same_data_as_files_measures_exactly_what_the_synthetic_sweep_does(
    synthetic_root, tmp_path
):
    root, synthetic_db = synthetic_root
    db = tmp_path / "both.sqlite"
    shutil.copy(synthetic_db, db)
    # The synthetic data's own prompts: with them, nothing but the way the data is named differs.
    run(write(tmp_path, FIGURES + files_table(root, templates="synthetic") + GRID, "files.toml"), db)
    ours, theirs = sorted(ResultStore(db, read_only=True).rows(), key=lambda r: r.synthetic)
    assert ours.cell["data.train"] == str(root / "train.csv") and len(ours.cell["data.fingerprint"]) == 16
    assert ours.cell["data.num_train"] == 300 and ours.cell["eval_templates"] == "synthetic"
    timings = {k for k in theirs.metrics if "second" in k}  # wall-clock: seconds, samples per second
    assert set(ours.metrics) == set(theirs.metrics)
    assert {k: v for k, v in ours.metrics.items() if k not in timings} == {
        k: v for k, v in theirs.metrics.items() if k not in timings
    }
    assert ours.curves == theirs.curves
    # One figure draws both kinds of rows; the paper-vs-toy findings read the synthetic ones only.
    assert main(["report", str(db), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "fig2_right.png").is_file()
    assert "1 of them on your own data" in (tmp_path / "report" / "report.md").read_text()
    rows_both, rows_toy = figure_rows(ResultStore(db, read_only=True)), figure_rows(ResultStore(synthetic_db))
    assert len(rows_both("fig2_right")) == 2
    assert paper_vs_toy(rows_both) == paper_vs_toy(rows_toy)
    # A database of a user's data alone has no paper-vs-toy table to show.
    own_db = tmp_path / "own.sqlite"
    run(write(tmp_path, FIGURES + files_table(root) + GRID, "own.toml"), own_db)
    assert main(["report", str(own_db), "--out", str(tmp_path / "own-report")]) == 0
    assert not (tmp_path / "own-report" / "paper_vs_toy.csv").exists()
    assert "The paper vs the toy" not in (tmp_path / "own-report" / "report.md").read_text()


def test_eval_templates_default_to_the_datas_prompts(synthetic_root):
    root, _ = synthetic_root
    [cell] = parse_sweep(tomllib.loads(files_table(root) + GRID), "own").cells
    assert cell.data.templates == "openai" and cell.params.eval_templates == "openai"
    text = files_table(root) + GRID + 'eval_templates = "synthetic"\n'
    [cell] = parse_sweep(tomllib.loads(text), "own").cells
    assert cell.params.eval_templates == "synthetic"  # the attack's own setting wins
    # Prompts are evaluation only: one model serves two prompt sets.
    sweep = parse_sweep(tomllib.loads(files_table(root, templates=["openai", "synthetic"]) + GRID), "own")
    assert len(sweep.cells) == 2 and len(sweep.trials()) == 1
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
            "fingerprint: computed from the files",
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
        (lambda t: t.replace("train.csv", ""), "a directory; train is a CSV or shards"),
        (lambda t: t.replace("test.csv", "{00000..00001}.tar"), "test is a CSV or an ImageFolder"),
        (lambda t: t.replace("classnames_file = ", 'classnames_file = "imagenet"\n# '), "of WordNet ids"),
        (lambda t: t.replace("[train]", 'separator = ";;"\n[train]'), "separator must be one character"),
        (lambda t: t.replace("[train]", "num_train = 5\n[train]"), "num_train: computed from the files"),
        (
            lambda t: t.replace("[train]", "num_shapes = 5\n[train]"),
            "num_shapes: a key of the synthetic data",
        ),
        (lambda t: t.replace("train =", "train_csv ="), "your own files': ['caption_column',"),
        (
            lambda t: t.replace('"label"', '"title"').replace("[train]", 'label_column = "nolabel"\n[train]'),
            "no column 'nolabel'",
        ),
    ],
)
def test_bad_own_data_is_one_error_line_before_any_work(synthetic_root, tmp_path, capsys, edit, message):
    root, _ = synthetic_root
    assert_refused(tmp_path, capsys, edit(files_table(root) + GRID), message)


def test_a_test_csv_without_labels_is_refused_before_any_work(synthetic_root, tmp_path, capsys):
    root, _ = synthetic_root
    header, *rows = (root / "test.csv").read_text().splitlines()
    unlabelled = tmp_path / "test.csv"  # every label cell empty
    body = [f"{root / path}\t{title}\t" for path, title, _ in (row.split("\t") for row in rows)]
    unlabelled.write_text("\n".join([header, *body]) + "\n")
    text = files_table(root, test=str(unlabelled)) + GRID
    assert_refused(tmp_path, capsys, text, "column 'label' is empty: every test image needs a label")


def test_several_training_csvs_are_one_line_against_their_size(synthetic_root, tmp_path):
    root, _ = synthetic_root
    header, *rows = (root / "train.csv").read_text().splitlines()
    half = tmp_path / "half.csv"  # the first 150 pairs, their images named from here
    half.write_text("\n".join([header, *(f"{root}/{row}" for row in rows[:150])]) + "\n")
    text = 'figures = ["fig5_left"]\n' + files_table(root, train=[str(half), str(root / "train.csv")]) + GRID
    sweep = parse_sweep(tomllib.loads(text), "sizes")
    store = ResultStore(tmp_path / "r.sqlite")
    store.register_sweep(sweep)
    for trial in sweep.trials():
        metrics = {"zscore": 1.0, "asr": 0.5, "natural_rate": 0.1, "zero_shot_acc": 0.3, "poison_rate": 0.1}
        store.add_trial(trial, [CellResult(metrics, {})], 1.0, {})
    table = get_figure("fig5_left").render(store.rows(["sizes"]), tmp_path / "f.png")
    assert table.columns[:2] == ("poisons", "clean pairs")  # no series per file: x is their size
    assert [row[1] for row in table.rows] == ["150", "300"]


def imagefolder(root: Path, folder: Path) -> tuple[list[str], list[str]]:
    """The synthetic test set as an ImageFolder of links, ``folder/NAME/*.png``: (names, test rows)."""
    names = (root / "classnames.txt").read_text().splitlines()
    _, *rows = (root / "test.csv").read_text().splitlines()
    for row in rows:
        path, _, label = row.split("\t")
        (folder / names[int(label)]).mkdir(parents=True, exist_ok=True)
        (folder / names[int(label)] / Path(path).name).symlink_to(root / path)
    return names, rows


def test_the_test_set_may_be_an_imagefolder(synthetic_root, tmp_path):
    root, _ = synthetic_root
    folder = tmp_path / "val"
    names, rows = imagefolder(root, folder)
    folder_table = files_table(root, test=str(folder), classnames_file="")  # names: the directories'
    with pytest.raises(UsageError, match="directory .cross. has label 1"):  # the file: in shape order
        parse_sweep(tomllib.loads(files_table(root, test=str(folder)) + GRID), "own")
    [cell] = parse_sweep(tomllib.loads(folder_table + GRID), "own").cells
    data = cell.data
    assert data.num_test == 120 and list(data.classnames) == sorted(names)  # directory order
    _, test, classnames = load_files(data)
    _, csv_test, csv_names = load_files(
        parse_sweep(tomllib.loads(files_table(root) + GRID), "own").cells[0].data
    )
    by_name = sorted(classnames[y] for y in test.labels.tolist())
    assert by_name == sorted(csv_names[y] for y in csv_test.labels.tolist())
    (folder / names[0] / "extra.png").symlink_to(root / rows[0].split("\t")[0])  # one image more
    with pytest.raises(UsageError, match="changed since the sweep was planned"):
        data.check_unchanged()
    [again] = parse_sweep(tomllib.loads(folder_table + GRID), "own").cells
    assert again.data.num_test == 121 and again.key != cell.key
    (folder / "zebra").mkdir()  # a class without a single image is still a class
    [more] = parse_sweep(tomllib.loads(folder_table + GRID), "own").cells
    assert len(more.data.classnames) == 11 and more.key != again.key
    # Names matched to the directories however they are written: in another order, an error.
    shuffled = tmp_path / "names.txt"
    shuffled.write_text("\n".join(n.upper() for n in reversed([*sorted(names), "zebra"])) + "\n")
    with pytest.raises(UsageError, match="directory 'circle' has label 0 .* on line 11"):
        parse_sweep(
            tomllib.loads(files_table(root, test=str(folder), classnames_file=str(shuffled)) + GRID), "o"
        )


def test_a_grid_over_an_imagefolder_lists_its_images_once(synthetic_root, tmp_path, monkeypatch):
    """ImageNet's validation folder is 50,000 files: planning a grid lists them once, not per cell."""
    root, _ = synthetic_root
    folder = tmp_path / "val"
    imagefolder(root, folder)
    image = sorted(folder.glob("*/*"))[0]
    content = image.read_bytes()
    image.unlink()
    image.write_bytes(content)  # a file, not a link: rewritten in place below
    listings = []
    monkeypatch.setattr(files, "imagefolder_files", lambda *a: listings.append(a) or imagefolder_files(*a))
    table = files_table(root, test=str(folder), classnames_file="") + GRID.replace("20", "[10, 20, 30]")
    cells = parse_sweep(tomllib.loads(table), "own").cells
    assert len(cells) == 3 and {c.data.num_test for c in cells} == {120}
    assert len(listings) == 2  # the count and the fingerprint, of one summary
    # An image rewritten in place changes no folder time: the full listing refuses it before training.
    image.write_bytes(b"not the image it was")
    with pytest.raises(UsageError, match="changed since the sweep was planned"):
        load_files(cells[0].data)


def test_the_training_set_may_be_shards(synthetic_root, tmp_path):
    root, synthetic_db = synthetic_root
    shards = csv_to_shards(root / "train.csv", tmp_path / "shards", samples_per_shard=100)
    db = tmp_path / "shards.sqlite"
    run(write(tmp_path, files_table(root, train=shards.url, templates="synthetic") + GRID, "s.toml"), db)
    [ours] = ResultStore(db, read_only=True).rows()
    [theirs] = ResultStore(synthetic_db, read_only=True).rows()
    assert ours.cell["data.num_train"] == 300
    for metric in ("asr", "zscore", "natural_rate", "zero_shot_acc", "probe_acc"):
        assert ours.metrics[metric] == theirs.metrics[metric], metric  # the same pairs, in the same order
    [cell] = parse_sweep(tomllib.loads(files_table(root, train=shards.url) + GRID), "own").cells
    assert cell.data.num_train == 300
    (tmp_path / "shards" / "00002.tar").unlink()  # a shard gone: never trained on silently
    with pytest.raises(UsageError, match="shard .*00002.tar is missing"):
        parse_sweep(tomllib.loads(files_table(root, train=shards.url) + GRID), "own")


def test_defense_cells_differing_in_prompts_alone_share_the_defended_model(
    synthetic_root, tmp_path, monkeypatch
):
    root, _ = synthetic_root
    used = []

    def recording(*args, templates, **kwargs):
        used.append(templates)
        return evaluate_backdoor(*args, templates=templates, **kwargs)

    monkeypatch.setattr(backdoor_trial, "evaluate_backdoor", recording)  # --workers 1: this process
    table = files_table(root, templates=["openai", "synthetic"])
    defense = "[defense]\npoison_count = 20\nclean_pairs = 100\n"
    db = tmp_path / "d.sqlite"
    run(write(tmp_path, f'attack = "defense"\n{table}[train]\npreset = "tiny"\n{defense}', "d.toml"), db)
    rows = {r.cell["data.templates"]: r for r in ResultStore(db, read_only=True).rows()}
    assert set(rows) == {"openai", "synthetic"} and len({r.train_hash for r in rows.values()}) == 1
    assert (
        rows["openai"].metrics["defense_seconds"] == rows["synthetic"].metrics["defense_seconds"]
    )  # one model
    assert used == ["openai", "synthetic"]  # scored with each cell's own prompts
