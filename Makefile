# miglab: the two commands a new user needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_TRACE ?= traces/redis-512M.npz
# The question: a 64 GiB guest whose redis load grows with its memory (the bundled 512 MiB trace, calibrated and
# scaled proportionally) on a 10 Gbit/s link: which strategy, at what cost? The host constants are the bundled
# calibration (results/validation/full/host.json, fit on 126 real migrations); add --uncalibrated to compare.
DEMO_MODEL = results/demo/$(basename $(notdir $(DEMO_TRACE))).model.json
DEMO_ARGS ?= --memory 64GiB --scaling proportional --bandwidth 10Gbit/s --rtt 1ms --downtime-limit 300ms

.PHONY: venv demo test test-fast lint bench deps notebooks clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[harness,lab,test]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: stop-and-copy, pre-copy, post-copy and hybrid on a model of the bundled real trace.
demo: $(STAMP)
	@mkdir -p results/demo
	$(BIN)/miglab calibrate $(DEMO_TRACE) -o $(DEMO_MODEL) > results/demo/calibrate.txt
	$(BIN)/miglab compare --model $(DEMO_MODEL) $(DEMO_ARGS) -o results/demo

# Host packages for the real-VM tests (QEMU >= 9, busybox, cpio, iproute2), then the whole suite.
deps:
	bash harness/install-deps.sh

test: $(STAMP) deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	@mkdir -p results/scratch  # miglab creates no parents of a path it is given
	$(BIN)/miglab regress --suite results/baselines/sim-suite.toml --baseline results/baselines/sim.json -q \
		--markdown results/scratch/sim-regress.md

# Nothing that needs root, QEMU or network namespaces.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not vm and not netns"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every figure beside its peer or floor (SimGrid 3.32's C++ plugin when libsimgrid-dev and g++ are
# installed, the closed forms, the packed-bitmap numpy floor), also written to results/bench/*.json.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py --json results/bench/engine.json
	$(BIN)/python benchmarks/bench_sweep.py --json results/bench/sweep.json
	for b in benchmarks/bench_calibrate.py benchmarks/bench_harness.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Re-render the committed notebook figures (results/notebooks/) with the notebooks' full parameters; a notebook
# run any other way writes to results/scratch/notebooks/figures/.
notebooks: $(STAMP)
	mkdir -p results/scratch/notebooks
	for n in round-thresholds beyond-14GiB validation; do \
		$(BIN)/papermill -k python3 notebooks/$$n.ipynb results/scratch/notebooks/$$n.out.ipynb \
			-p out_dir results/notebooks/$$n || exit 1; done

clean:
	rm -rf $(VENV) results/demo .pytest_cache
