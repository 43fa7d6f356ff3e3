# make demo : set up .venv if needed, then train on built-in data and print the test metrics
# make test : set up .venv if needed, then run the whole test suite
# make bench: run the benchmark scripts (figures go to BENCHMARKS.md by hand, with the command)
# make bench-tables: cotune against LightGBM, linear, RealMLP and FLAML on ten tables x 3 splits (several hours)
# make bench-text: cotune against TF-IDF + logistic regression on Debian's fortunes quotations, 3 splits (about 45 min)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
# torch is pinned to the CPU wheel that this machine carries; an open range would pull a CUDA build.
TORCH   ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test bench bench-tables bench-text venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,track,postgres,onnx,explain]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cotune demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# two pytest workers, one per core, each test file on one of them (its module fixtures built once);
# PYTEST_ARGS= runs the suite in one process
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/loop_overhead.py
	$(BIN)/python bench/mnist1d_reference.py

bench-tables: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/tabular_suite.py

bench-text: $(STAMP)
	bash scripts/install_fortunes.sh
	$(BIN)/python bench/text_fortunes.py

clean:
	rm -rf $(VENV) .pytest_cache
