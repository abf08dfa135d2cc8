# Two entry points for a fresh machine: `make demo` (the CPU demo end to end) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# --no-compile: Python compiles a module when it is first imported instead of pip compiling all of them
# (torch's thousands) at install: 27 s of CPU instead of 67 s for a clean clone's install here.
PIP     = $(BIN)/pip install -q --no-compile
# ...which needs Python to keep what it compiled: where PYTHONDONTWRITEBYTECODE is set (container images, this
# machine), every process compiled torch, transformers and ModelOpt from source again, each time (a clean clone's
# suite 56 s slower). The demo and the tests run without it; later runs read the bytecode they left.
RUN     = env -u PYTHONDONTWRITEBYTECODE
# The virtual environment with a current pip, made once.
VENV_UP = test -x $(BIN)/pip || { $(PYTHON) -m venv $(VENV) && $(PIP) --upgrade pip; }

.PHONY: setup setup-dynamo demo test
setup: $(VENV)/.installed

# torch is pinned exactly (here and in pyproject.toml) so pip never picks a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(VENV_UP)
	$(PIP) torch==2.13.0 -e '.[dev]'
	touch $@

# Test extra: Dynamo's frontend + mocker for the OpenAI-protocol tests (86 MB of wheels, ~260 MB installed;
# about 25 s with a warm pip cache, 20 s more to download them here). On a clean clone everything goes in with
# one pip call (one resolution of the dependencies instead of three); after `make setup`, only what is missing.
setup-dynamo: $(VENV)/.dynamo
$(VENV)/.dynamo: pyproject.toml
	$(VENV_UP)
	$(PIP) torch==2.13.0 -e '.[dev,dynamo-test]'
	$(PIP) --no-deps ai-dynamo==1.6.1
	touch $(VENV)/.installed $@

demo: setup
	$(RUN) $(BIN)/tritongen demo -o demo-out --force

# Two pytest-xdist workers: the tests mostly wait on servers, Locust and timers, so one process used about two thirds
# of one core. A module's tests stay on one worker, in file order (its module fixtures made once); the two workers
# share the run's cache, so the tiny model is trained and quantized once; a test whose figures another test's load
# would blur is marked `alone` and runs while the other worker waits (tests/conftest.py; docs/benchmarks.md,
# "Test suite").
# Three workers measured no faster (docs/benchmarks.md, "Where the suite's CPU goes").
TEST_WORKERS ?= 2
# The HTML report test screenshots it with headless Chromium (Debian's package; installed when root).
test: setup-dynamo
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report screenshot test will be skipped"
	$(RUN) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
