# The two commands of the README: `make reproduce` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint reproduce bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

reproduce: install
	$(BIN)/smp-lite data synth --out data/synth --figure docs/synth_grid.png
	$(BIN)/smp-lite pretrain --arch r3d18 --task smp --data data/synth --out runs/smp-r3d18 --overwrite

bench: install
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_decoders.py

clean:
	rm -rf $(VENV) runs data
