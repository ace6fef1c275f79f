# The README's two commands: `make demo` (end to end on synthetic phantoms) and `make test`.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test bench
# `brats2d view` renders with NiiVue, installed from the pinned lock file (no CDN at run time).
# Without npm the rest still installs; `brats2d view` then says how to get it, its browser test skips.
NIIVUE = brats2d/view/node_modules/@niivue/niivue/dist/index.js

install: $(NIIVUE)
	$(PIP_INSTALL) -c constraints.txt -e ".[dev]"

$(NIIVUE): brats2d/view/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix brats2d/view --no-audit --no-fund --ignore-scripts --loglevel=error && touch $@; \
	else echo "warning: npm not found: brats2d view needs NiiVue (install Node.js/npm, then make install)"; fi

demo: install
	$(PYTHON) -m brats2d demo --out runs/demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_preprocess.py --json runs/bench_preprocess.json
	$(PYTHON) benchmarks/bench_loader.py --json runs/bench_loader.json
	$(PYTHON) benchmarks/bench_train.py --json runs/bench_train.json
