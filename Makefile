# Firebox developer entry points. `make run` and `make test` work on a clean checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run
# `make test` (and lint, fuzz, bench) install everything the suite exercises: the dev tools,
# the engine, Ray Serve for the deployment driver and boto3 for the S3 store. `make run`
# installs only the engine, so it stays light (no Ray, no test tools).
EXTRAS ?= dev,engine,ray,s3
RUN_EXTRAS ?= engine

.PHONY: install run test test-fast fuzz lint format bench clean demo-models

# Creates the venv if needed and installs Firebox (editable) with its extras;
# re-runs only when pyproject.toml changes.
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(RUN_EXTRAS)]'
	@touch $(RUN_STAMP)

# Starts the embedded platform on 127.0.0.1:8000 with its state in ./.firebox/.
run: $(RUN_STAMP)
	$(BIN)/firebox serve

# The whole suite. FIREBOX_TEST_DATABASE_URL / FIREBOX_TEST_REDIS_URL add PostgreSQL / Redis runs.
test: install
	$(BIN)/pytest

# The suite without the slow end-to-end tests (they still run in `make test` and CI).
test-fast: install
	$(BIN)/pytest -m "not slow"

# The schemathesis run of `make test` (tests/e2e/test_fuzz.py), longer: 200 examples per
# operation and phase instead of 5. FIREBOX_TEST_DATABASE_URL / FIREBOX_TEST_REDIS_URL add PostgreSQL.
FUZZ_EXAMPLES ?= 200
fuzz: install
	FIREBOX_TEST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/e2e/test_fuzz.py --timeout 3600

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Runs every benchmark in bench/; each prints a table and appends to docs/benchmarks.md.
bench: install
	@set -e; found=0; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; found=1; echo "== $$script"; $(BIN)/python "$$script"; \
	done; [ $$found = 1 ] || echo "no benchmarks in bench/ yet"

# Re-creates models/ (tokenizer, firebox-tiny, its LoRA add-on, README.md) offline, with the
# defaults that produced the committed weights; about 7 minutes on one CPU core.
demo-models: install
	$(BIN)/python scripts/build_demo_models.py --out-dir models --steps 500 --lora-steps 200 \
		--seed 0 --vocab-size 4096 --threads 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
