# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use, install the pinned CPU torch wheel, then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructune demo $(ARGS)

test: $(STAMP)
	# The report test renders a page in headless Chromium (Debian's package).
	command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; } || echo "chromium missing: the browser test will skip"
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/train_throughput.py --steps 8 --repeats 2
	$(PY) bench/eval_throughput.py --threads 1
	$(PY) bench/adapter_swap.py
	$(PY) bench/scaling.py
	$(PY) bench/retention_overhead.py
	$(PY) bench/scoring_passes.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info
