# Two commands on a fresh machine with python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean sqla-suite

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exdb demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# Every benchmark; security.py and compare.py install PostgreSQL if missing (as root), and
# compare.py (last) rewrites docs/benchmarks.md and docs/benchmarks.png.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/roundtrip.py
	if [ -f benchmarks/scatter.py ]; then $(BIN)/python benchmarks/scatter.py; fi
	$(BIN)/python benchmarks/parallel.py
	$(BIN)/python benchmarks/security.py --install-postgres
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/arrow.py
	$(BIN)/python benchmarks/copy_import.py
	$(BIN)/python benchmarks/run_stream.py
	$(BIN)/python benchmarks/contention.py
	$(BIN)/python benchmarks/planner.py
	$(BIN)/python benchmarks/tpch.py --sf 0.1 --install-postgres
	$(BIN)/python benchmarks/tpch.py --sf 1 --install-postgres  # long: prints each step
	$(BIN)/python benchmarks/compare.py --install-postgres

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# SQLAlchemy's dialect compliance suite on 1 and 2 nodes, with plain SQLite as the baseline
# (several minutes: not part of `make test`).
sqla-suite: $(STAMP)
	$(BIN)/python tests/sqla_suite/run.py
