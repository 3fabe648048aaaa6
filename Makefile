# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# The official BraTS evaluation package pins numpy<2.3 and pandas<3, so the agreement test with it
# runs in an environment of its own.
ORACLE  ?= .venv-oracle

.PHONY: demo test oracle-test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch, pinned; on a GPU machine `pip install -e .` alone takes the CUDA build.
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.3"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cascadeseg demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(MAKE) --no-print-directory oracle-test

# Lesion-wise metrics against the official package (BraTS-evaluation, on panoptica): installed in
# $(ORACLE) when PyPI has it; if it cannot be installed the test says so and is left out.
$(ORACLE)/.installed:
	@test -x $(ORACLE)/bin/python || $(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install -q "BraTS-evaluation==0.0.10" pytest && touch $@ \
	  || echo "oracle-test: BraTS-evaluation could not be installed; the agreement test is left out"

oracle-test:
	@$(MAKE) --no-print-directory $(ORACLE)/.installed || true
	@if test -f $(ORACLE)/.installed; then \
	  PYTHONPATH=src $(ORACLE)/bin/python -m pytest -q -p no:cacheprovider --noconftest \
	    tests/evaluation/test_lesions_oracle.py; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/cascadeseg benchmark --suite all --out benchmarks/results.json

clean:
	rm -rf $(VENV) $(ORACLE) demo_out .pytest_cache .mypy_cache .ruff_cache
