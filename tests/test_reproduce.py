"""`poisonclip reproduce`: every experiment file, resumable, then the report and paper-vs-toy table."""

import time

from poisonclip.cli import main
from poisonclip.report.document import README_END, README_START

ONE_TRIAL = """
figures = ["fig6"]
seeds = 1
[data]
num_train = 200
num_test = 100
num_shapes = 10
[train]
preset = "tiny"
[backdoor]
poison_count = 5
patch_size = [2, 4]
"""


def test_reproduce_runs_files_then_reports_and_a_second_call_trains_nothing(tmp_path, capsys):
    experiment = tmp_path / "patches.toml"
    experiment.write_text(ONE_TRIAL)
    db, out, figures = tmp_path / "r.sqlite", tmp_path / "report", tmp_path / "figures"
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n\n{README_START}\nold table\n{README_END}\n\nmore text\n")
    argv = ["reproduce", str(experiment), "--db", str(db), "--out", str(out), "--figures", str(figures),
            "--readme", str(readme), "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "sweep patches: trained 2, 0 already stored (2 trials), 0 failed" in first
    assert (out / "fig6.png").is_file() and "## The paper vs the toy" in (out / "report.md").read_text()
    assert {p.name for p in figures.iterdir()} == {"fig6.png", "fig6.csv", "paper_vs_toy.csv"}
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{README_END}\n\nmore text\n")
    assert "| small patches fail, larger ones work (Fig 6) |" in text and text.count("| not run yet |") == 8

    start = time.perf_counter()
    assert main([*argv, "--overwrite"]) == 0
    assert time.perf_counter() - start < 60
    assert "sweep patches: trained 0, 2 already stored (2 trials), 0 failed" in capsys.readouterr().out


def test_reproduce_checks_every_file_before_training(tmp_path, capsys):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(ONE_TRIAL)
    bad.write_text(ONE_TRIAL.replace("patch_size", "patch_sise"))
    db = tmp_path / "r.sqlite"
    assert main(["reproduce", str(good), str(bad), "--db", str(db), "--out", str(tmp_path / "o")]) == 2
    assert "patch_sise" in capsys.readouterr().err
    assert not db.exists()


def test_reproduce_refuses_a_readme_without_the_table_markers(tmp_path, capsys):
    experiment = tmp_path / "patches.toml"
    experiment.write_text(ONE_TRIAL)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    argv = ["reproduce", str(experiment), "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "o"),
            "--readme", str(readme), "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "needs one line <!-- paper-vs-toy" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n" and not (tmp_path / "r.sqlite").exists()  # refused first
