# Two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# pip (not uv/poetry) takes the pinned torch from this machine's local wheel store.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/poisonclip demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) results .pytest_cache
