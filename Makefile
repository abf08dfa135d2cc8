# Two entry points for a fresh machine: `make demo` (the CPU demo end to end) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# uv installs: 11 s for what pip took about 45 s to resolve and unpack on a clean clone here (docs/benchmarks.md,
# "Set-up"). It does not read pip's configuration, so it is given pip's package sources as flags (pip.conf and
# PIP_* variables: find-links, indexes, constraints; where this machine keeps the CPU torch wheel) and takes the
# best version over all of them, as pip does. uv compiles nothing at install (pip took 67 s of CPU to compile torch's
# thousands of modules); Python compiles a module when it is first imported...
UV      = $(BIN)/uv
INSTALL = $(UV) pip install -q --python $(BIN)/python --index-strategy unsafe-best-match \
          $$($(BIN)/python -c "$$PIP_SOURCES_AS_UV_FLAGS")
define PIP_SOURCES_AS_UV_FLAGS
import ast, subprocess, sys
flags = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "constraint": "--constraint"}
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
for line in listed.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rpartition(".")[2])
    if flag:
        print(*(f"{flag} {source}" for source in ast.literal_eval(value).split()))
endef
export PIP_SOURCES_AS_UV_FLAGS
# ...which needs Python to keep what it compiled: where PYTHONDONTWRITEBYTECODE is set (container images, this
# machine), every process compiled torch, transformers and ModelOpt from source again, each time (a clean clone's
# suite 56 s slower). The demo and the tests run without it; later runs read the bytecode they left.
RUN     = env -u PYTHONDONTWRITEBYTECODE
# The virtual environment (with pip, for the user) and uv in it, made once.
VENV_UP = { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } && { test -x $(UV) || $(BIN)/pip install -q uv==0.13.10; }

.PHONY: setup setup-dynamo demo test
setup: $(VENV)/.installed

# torch is pinned exactly (here and in pyproject.toml) so the installer never picks a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(VENV_UP)
	$(INSTALL) torch==2.13.0 -e '.[dev]'
	touch $@

# Test extra: Dynamo's frontend + mocker for the OpenAI-protocol tests (86 MB of wheels, ~260 MB installed;
# on a clean clone everything goes in with one resolution of the dependencies; after `make setup`, only what is
# missing.
setup-dynamo: $(VENV)/.dynamo
$(VENV)/.dynamo: pyproject.toml
	$(VENV_UP)
	$(INSTALL) torch==2.13.0 -e '.[dev,dynamo-test]'
	$(INSTALL) --no-deps ai-dynamo==1.6.1
	touch $(VENV)/.installed $@

demo: setup
	$(RUN) $(BIN)/tritongen demo -o demo-out --force

# Three pytest-xdist workers on the two cores: the tests mostly wait on servers, Locust and timers, so two left about
# a fifth of the cores idle; with one torch thread a process (tests/conftest.py) a third worker fills most of it
# (quiet clean clones' `make test` 6:46-7:31 against 7:23-8:37 with two, a fourth no faster: docs/benchmarks.md,
# "Three workers"). A module's tests stay on one worker, in file order (its module fixtures made once); the workers
# share the run's cache, so the tiny model is trained and quantized once; a test whose figures another test's load
# would blur is marked `alone` and runs while the other workers wait (tests/conftest.py; docs/benchmarks.md,
# "Test suite").
TEST_WORKERS ?= 3
# The HTML report test screenshots it with headless Chromium (Debian's package; installed when root).
test: setup-dynamo
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report screenshot test will be skipped"
	$(RUN) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
