# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## run the real connector against a sandbox store and WhatsApp on 127.0.0.1
	$(BIN)/storeloop demo

test: $(VENV)/.installed  ## the whole suite; PostgreSQL tests run when 127.0.0.1:5432 answers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: $(VENV)/.installed
	$(BIN)/storeloop serve --config $(or $(CONFIG),storeloop.toml)

bench: $(VENV)/.installed  ## every bench/ script, figures printed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
