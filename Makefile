# Two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench gpu-check gpu-check-smoke figures clean

setup: $(STAMP)

# pip (not uv/poetry) takes the pinned torch from this machine's local wheel store.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/poisonclip demo --overwrite

# lint-imports: the import contracts in pyproject.toml (layers, no circles, a light package import).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

# One result line per benchmark, its ratio last (~7 minutes on an idle 2-core CPU). Timings taken
# under load mislead: each line reports the load average; run when `uptime` shows less than 1.
bench: $(STAMP)
	$(BIN)/python bench/bench_trainer.py
	$(BIN)/python bench/bench_many.py
	$(BIN)/python bench/bench_zscore.py
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_poison_write.py

# The GPU numbers: a line naming the device, then five checks, each one line ending with a ratio
# measured in the run (demo, trainer vs open_clip_train, grouped seeds, z-score, torch.compile);
# within 8 minutes on one GPU. A failing check prints a FAILED line; the others still run.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

# The same checks at toy size on the CPU (under a minute; tests/test_gpu_check.py runs it too).
gpu-check-smoke: $(STAMP)
	$(BIN)/python bench/gpu_check.py --smoke

# Every shipped experiment file into results/sweeps.sqlite (committed: a second call trains nothing
# and takes under a minute), then the report with the paper-vs-toy table; figures to docs/figures.
figures: $(STAMP)
	$(BIN)/poisonclip reproduce --figures docs/figures --readme README.md --overwrite

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .import_linter_cache
	find results -mindepth 1 -maxdepth 1 ! -name sweeps.sqlite -exec rm -rf {} + 2>/dev/null || true  # keep the committed database
