# `make demo` and `make test` do all set-up themselves on a fresh machine:
# a .venv next to this file, the project installed editable with every extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PACKAGES := sendmux_dispatch sendmux_sandbox

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[sandbox,redis,airflow,celery,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/demo.py

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy
	# What users see, with no pydantic plugin: mypy --strict and pyright on a user's script.
	$(PY) -m mypy --config-file tests/typing/mypy.ini tests/typing/user_code.py
	$(VENV)/bin/basedpyright --pythonpath $(PY) -p tests/typing/pyrightconfig.json

test: lint typecheck
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
