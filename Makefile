# moesif-backfill: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash examples/demo.sh

# Test files run on 2 processes (each with its own session servers); `pytest` alone runs serially.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# bench/README.md. BASELINE=PATH: also measure that checkout (e.g. a worktree of b96172b) in the
# same run and print the ratios; BENCH_ARGS: more bench.py options (e.g. --skip-20m or --quick).
BASELINE   ?=
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/bench.py --json .bench/bench.json $(BENCH_ARGS) $(if $(BASELINE),--baseline-worktree $(BASELINE))
	$(PY) bench/bench_cli.py --repeat 5 --json .bench/bench_cli.json $(if $(BASELINE),--baseline-worktree $(BASELINE))

clean:
	rm -rf .demo .bench build *.egg-info
