# The two commands of the README: `make reproduce` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test check lint reproduce notebooks bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

# The fast lane for the edit loop: the tests under ~3 s each, no notebooks (docs/development.md)
check: install
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every pretraining and evaluation behind Table 1, Table 2 and retrieval (smp_lite/tools/reproduce.py):
# the generated-data profile, about 100 min on 2 CPU cores (docs/reproduce.md), writes results/synth/. With
# DATA=ucf101:/path (or hmdb51:) the paper profile runs method.md's protocol on that dataset
# instead (for GPUs), into results/paper/. A rerun reuses the finished steps.
DATA ?=
reproduce: install
	$(BIN)/smp-lite reproduce $(if $(DATA),--profile paper --data $(DATA),--profile synth)

# Re-run the tutorials at their full sizes and save their outputs in place (~10 min, 2 CPU cores)
notebooks: install
	$(BIN)/jupyter execute --inplace --timeout=900 tutorials/*.ipynb

# Speed: each part of a pretraining step timed alone (docs/benchmarks.md, rewritten in place),
# the CPU bf16 conv3d check, and the decoders. On a GPU machine: bash benchmarks/gpu_check.sh
bench: install
	$(BIN)/smp-lite bench --write docs/benchmarks.md
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_decoders.py

clean:
	rm -rf $(VENV) runs data
