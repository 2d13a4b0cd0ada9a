# Two commands on a fresh machine: `make book` builds the book, `make test` runs the tests.
# Everything they need is installed here, into .venv, from pinned versions.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test unit book bench clean

# torch is pinned to the CPU build (pyproject.toml): an unpinned torch would pull GBs of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[book,test]"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

install: $(STAMP)

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not claims" -q

test: unit

clean:
	rm -rf _build book/executed
