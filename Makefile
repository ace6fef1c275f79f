# The README's two commands: `make demo` (end to end on synthetic phantoms) and `make test`.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test bench

install:
	$(PIP_INSTALL) -c constraints.txt -e ".[dev]"

demo: install
	$(PYTHON) -m brats2d demo --out runs/demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_preprocess.py --json runs/bench_preprocess.json
	$(PYTHON) benchmarks/bench_loader.py --json runs/bench_loader.json
	$(PYTHON) benchmarks/bench_train.py --json runs/bench_train.json
