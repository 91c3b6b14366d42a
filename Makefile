# The README's two commands: `make demo` and `make test`. Both work on a fresh machine with only python3.
# VENV may point outside the clone (CI caches one there: see .ci/run).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Reinstall dependencies only when pyproject.toml or the pinned versions (.ci/constraints.txt, shared with the
# Docker image) change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml .ci/constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo demo-next test test-fast bench lint install dev clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml .ci/constraints.txt
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The project itself is (re)installed editable every time: a cached venv may point at another clone.
install: $(STAMP)
	$(BIN)/pip install --quiet --no-deps -e .

# Headless Chromium renders the eval report in a test; installed from Debian when we may.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found; the HTML report rendering test will be skipped"; fi; }

demo: install
	@test -f data/synth64/manifest.json || $(BIN)/flowergan data synth --out data/synth64 --n 4096 --size 64 --seed 0
	rm -rf runs/smoke
	$(BIN)/flowergan train --config jobs/smoke.toml --run-dir runs/smoke
	$(BIN)/flowergan sample --ckpt runs/smoke --n 64 --seed 1 --out runs/smoke/final-grid.png
	@$(MAKE) --no-print-directory -s demo-next

# The demo's closing lines: commands that work as printed from the clone (tests/test_demo_next.py runs them).
# The commands live in $(BIN), which is not on PATH until the venv is activated.
demo-next:
	@echo "demo done: runs/smoke/progress.gif (samples over training), runs/smoke/final-grid.png, runs/smoke/losses.png"
	@echo "next, from this folder (the commands live in $(BIN); or 'source $(BIN)/activate' and drop the prefix):"
	@echo "  $(BIN)/tensorboard --logdir runs/smoke/tb --samples_per_plugin images=0"
	@echo "  $(BIN)/flowergan-eval report --ckpt runs/smoke --n 2000 --out runs/smoke/report.html"

test: install system-deps
	$(BIN)/python -m pytest -q --durations=15

# The inner loop: everything not marked slow (a few minutes on 2 cores).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

bench: install
	@for b in benchmarks/train_step.py benchmarks/loader.py benchmarks/features.py benchmarks/scaling.py; do \
	  echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Style (ruff), types (mypy) and the import layering (import-linter), all configured in pyproject.toml; .ci/run
# runs it after the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf runs data .pytest_cache
