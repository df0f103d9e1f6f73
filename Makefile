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

# The README's results: quick SMP and PRP pretraining of c3d and r3d18 (~1 hour on 2 cores),
# each run's per-epoch metrics in runs/<task>-<arch>/metrics.jsonl, then their table
# (docs/pretrain_results.md) and curves (docs/pretrain_curves.png). The dataset is regenerated
# (same seed, same frames): one left by an older smp-lite would give other numbers.
RUNS := runs/smp-c3d runs/prp-c3d runs/smp-r3d18 runs/prp-r3d18
reproduce: install
	$(BIN)/smp-lite data synth --out data/synth --overwrite --figure docs/synth_grid.png
	for arch in c3d r3d18; do for task in smp prp; do \
		$(BIN)/smp-lite pretrain --arch $$arch --task $$task --data data/synth \
			--out runs/$$task-$$arch --overwrite || exit 1; \
	done; done
	$(BIN)/smp-lite report $(RUNS) --table docs/pretrain_results.md --figure docs/pretrain_curves.png

bench: install
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_decoders.py

clean:
	rm -rf $(VENV) runs data
