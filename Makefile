# Two commands on a fresh machine: `make book` builds the book, `make test` runs the tests.
# Everything they need is installed here, into .venv, from pinned versions.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test unit data book notebook html claims bench clean results

# torch is pinned to the CPU build (pyproject.toml): an unpinned torch would pull GBs of CUDA wheels.
# The peers (Foolbox 3, ART, torchattacks) are compared with advlib inside the book
# (the peers chapter): installed with --no-deps, so none of them can replace torch.
$(STAMP): pyproject.toml constraints.txt benchmarks/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[book,test]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt -r benchmarks/requirements.txt
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

install: $(STAMP)

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not claims" -q

# The book's executor is scripts/build_book.py (papermill, then jupyter-book
# with execute_notebooks off); see book/reproduce.md.
PRESET ?= quick
NB     ?=
PARAMS ?=

# Every data set the preset's chapters load, as each advlib.experiments.<chapter>
# names them: found, or Fashion-MNIST installed from Debian's package (as root),
# or a stop that says where advlib.data looked and how to get it.
data: $(STAMP)
	$(BIN)/python scripts/build_book.py data --preset $(PRESET)

# Every notebook of _toc.yml with the preset's parameters, then the HTML (Sphinx
# warnings are errors), checked for error output. Re-runnable: each run
# re-executes everything from scratch.
# RESULTS=dir: notebooks with a results file dir/<stem>.json (make results) show it instead of computing.
RESULTS ?=
book: data
	@start=$$(date +%s); \
	$(BIN)/python scripts/build_book.py build --preset $(PRESET) $(if $(RESULTS),--results $(RESULTS)) || exit $$?; \
	echo "make book: $$(( $$(date +%s) - start )) s wall time (preset $(PRESET), install excluded)"

# Every chapter's results outside the notebooks, into results/$(PRESET)/<stem>.json,
# on one process or on many (book/reproduce.md), e.g.
#   make results PRESET=paper LAUNCH="torchrun --nproc_per_node 8"
#   make book PRESET=paper RESULTS=results/paper
# The peers chapter times libraries against each other: it runs on one process, in the book.
LAUNCH ?= $(BIN)/python
results: data
	@for stem in $$($(BIN)/python scripts/build_book.py stems --sharded); do \
	  echo "make results: $$stem"; \
	  $(LAUNCH) -m advlib.experiments $$stem --preset $(PRESET) --out results/$(PRESET)/$$stem.json || exit $$?; \
	done

# One notebook with any parameters, e.g.
#   make notebook NB=deepfool_geometry PARAMS="-p seed 1 -p epochs 500"
notebook: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make notebook NB=<stem of notebooks/<stem>.md> [PARAMS=\"-p name value ...\"] [PRESET=quick]"; exit 2; }
	$(BIN)/python scripts/build_book.py run $(NB) --preset $(PRESET) $(PARAMS)

# The HTML from book/executed as it stands (after `make notebook`).
html: $(STAMP)
	$(BIN)/python scripts/build_book.py html

# The papers' claims, checked on the results the last `make book` saved in
# book/executed/*.json. pytest exits 5 when no claims test is collected yet.
claims: $(STAMP)
	$(BIN)/python -m pytest -m claims -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make claims: no claims tests collected"; exit 0; fi; exit $$rc

# What CI runs (.ci/run): the unit tests, the book with the quick preset, then
# the claims on the numbers that build saved. In this order: claims read the book's output.
test: $(STAMP)
	$(MAKE) unit
	$(MAKE) book PRESET=quick
	$(MAKE) claims

clean:
	rm -rf _build book/executed

# The DeepFool benchmark (benchmarks/README.md), never part of `make test`: the peers
# are installed with the rest (above); Fashion-MNIST is fetched if missing (as
# `make book` does), then every implementation is timed on the same images.
# Extra options: make bench BENCH_ARGS="--repeats 5"
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python scripts/build_book.py data --preset quick
	$(BIN)/python benchmarks/deepfool_bench.py $(BENCH_ARGS)
