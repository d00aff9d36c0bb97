# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test browser serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Ends by itself after the report (a script or CI can run it); `.venv/bin/storeloop demo
# --keep-running` keeps the dashboard and admin API serving until Ctrl-C.
demo: $(VENV)/.installed  ## run the real connector against a sandbox store and WhatsApp on 127.0.0.1
	$(BIN)/storeloop demo

test: $(VENV)/.installed browser  ## the whole suite; PostgreSQL tests run when 127.0.0.1:5432 answers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Best effort: the dashboard's browser test drives Debian's Chromium at /usr/bin/chromium and
# skips (loudly) without it. As root with apt-get it is installed; otherwise a warning, and
# `make test` goes on.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for tests/test_dashboard_browser.py (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "WARNING: could not install chromium; tests/test_dashboard_browser.py will skip" >&2; \
	else \
	  echo "WARNING: no /usr/bin/chromium, and installing it needs root and apt-get:" \
	       "tests/test_dashboard_browser.py will skip (run 'sudo apt-get install -y chromium' to include it)" >&2; \
	fi

serve: $(VENV)/.installed
	$(BIN)/storeloop serve --config $(or $(CONFIG),storeloop.toml)

bench: $(VENV)/.installed  ## every bench/ script, figures printed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
