# Two entry points for a fresh machine: `make demo` (the CPU demo end to end) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: setup setup-dynamo demo test
setup: $(VENV)/.installed

# torch is installed first and pinned in pyproject.toml so pip never picks a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Test extra: Dynamo's frontend + mocker for the OpenAI-protocol tests (86 MB of wheels, ~260 MB installed;
# about 25 s with a warm pip cache, 20 s more to download them here).
setup-dynamo: $(VENV)/.dynamo
$(VENV)/.dynamo: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,dynamo-test]'
	$(BIN)/pip install -q --no-deps ai-dynamo==1.6.1
	touch $@

demo: setup
	$(BIN)/tritongen demo -o demo-out --force

# The HTML report test screenshots it with headless Chromium (Debian's package; installed when root).
test: setup setup-dynamo
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report screenshot test will be skipped"
	$(BIN)/python -m pytest -q
