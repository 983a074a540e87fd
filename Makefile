# Fresh-machine entry points. `make test` builds .venv itself and runs lint, types and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest demo bench clean redis

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/exportgate serve

demo: $(STAMP)
	$(BIN)/exportgate demo

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is required for the tests: install it (e.g. 'sudo apt-get install redis-server')"; exit 1; \
	  fi; }
	@command -v redis-cli >/dev/null 2>&1 || { echo "redis-cli is required (package redis-tools)"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) redis
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(STAMP) redis
	$(BIN)/python -m bench.quota_bench
	$(BIN)/python -m bench.ledger_bench

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache
