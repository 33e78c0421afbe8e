# One entry point for every check; .ci/run calls `make test` verbatim.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test soak lint format bench demo docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "deployctl needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/pytest --cov --cov-report=

# The long soak (10 minutes; DEPLOYCTL_SOAK_SECONDS and DEPLOYCTL_SOAK_RATE change it).
soak: setup
	DEPLOYCTL_SOAK_SECONDS=$${DEPLOYCTL_SOAK_SECONDS:-600} DEPLOYCTL_SOAK_RATE=$${DEPLOYCTL_SOAK_RATE:-500} \
		$(BIN)/pytest --no-cov -s tests/reliability/test_soak.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup
	$(BIN)/deployctl demo

# Every bench/bench_*.py under its time bound, then bench/REPORT.md (bench/README.md).
bench: setup
	$(BIN)/python -m bench

docs: setup
	$(BIN)/deployctl messages docs --write docs/messages.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
