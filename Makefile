# The README's two commands: `make demo` (set up + run the pipeline on the embedded synthetic
# HDMAP) and `make test` (set up + run the test suite). Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pins: on the project's build machines these install from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all

.PHONY: install demo test docs lint readme-methods clean-work bench bench-anomalib bench-methods bench-trained bench-coreset bench-memory bench-search bench-cache bench-scale bench-verdicts bench-selection

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[pipeline,dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	PATH=$(abspath $(BIN)):$$PATH snakemake --cores $(CORES) --profile profiles/default all
	@echo "metrics: results/metrics.json and results/domain*_*.json"

# Two pytest workers (CI has 2 cores), fed test by test; a file with a module-scoped fixture
# goes whole to one worker, so it is built once, and the session's tiny pipeline runs once for
# both (tests/conftest.py: pytest_xdist_make_scheduler). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install
	PATH=$(abspath $(BIN)):$$PATH python -m pytest -q -n $(TEST_WORKERS)

# Benchmarks (figures printed and written under results/benchmarks/). anomalib gets its own
# environment so its pins never touch ours.
ANOMALIB_VENV ?= .venv-anomalib
ANOMALIB_SPEC ?= anomalib==2.7.0

$(ANOMALIB_VENV)/.installed:
	$(PYTHON) -m venv $(ANOMALIB_VENV)
	$(ANOMALIB_VENV)/bin/python -m pip install -q --upgrade pip
	$(ANOMALIB_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(ANOMALIB_VENV)/bin/python -m pip install -q $(ANOMALIB_SPEC)
	touch $@

bench-anomalib: install $(ANOMALIB_VENV)/.installed
	$(BIN)/python benchmarks/vs_anomalib.py

bench-methods: install $(ANOMALIB_VENV)/.installed
	$(BIN)/python benchmarks/methods_vs_anomalib.py

# FastFlow, STFPM, SuperSimpleNet vs anomalib's (training on the cache vs re-extracting), then
# the autoencoders vs the training-free methods through the pipeline (about 2 h on 2 cores).
# BENCH_JOBS: configurations run side by side (one single-threaded process each; at most the
# machine's cores), e.g. `make bench-trained BENCH_JOBS=2`
BENCH_JOBS ?= 1
bench-trained: install $(ANOMALIB_VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/trained_vs_anomalib.py \
	  --jobs "$(BENCH_JOBS)"

bench-coreset: install $(ANOMALIB_VENV)/.installed
	$(BIN)/python benchmarks/coreset_scale.py

bench-memory: install
	$(BIN)/python benchmarks/scoring_memory.py

bench-search: install
	$(BIN)/python benchmarks/search_recall.py

# Coverage of the hypothesis verdicts' interval on simulated data with a known truth.
bench-verdicts: install
	$(BIN)/python benchmarks/verdict_coverage.py

bench-cache: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/caching.py

# The user's full-size study, step by step (about 10 min on 2 idle cores; --quick: 1 min).
bench-scale: install
	$(BIN)/python benchmarks/scale.py

# Options chosen by synthetic anomalies vs the test-tuned choice: Kendall's tau and regret per
# method x recipe x strength on the demo's 4 domains (20-40 min on 2 cores; the script's
# --quick: one tiny domain).
bench-selection: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/selection.py

# -k: a benchmark that misses its target (exit 1) still leaves the others to run; make
# then exits non-zero.
bench:
	$(MAKE) -k bench-anomalib bench-methods bench-trained bench-coreset bench-memory bench-search \
	  bench-cache bench-scale bench-verdicts bench-selection

# The method table of the guide (docs/guide/methods.md), regenerated from the method registry.
readme-methods: install
	$(BIN)/python -c "import re, pathlib; from hdmap_ad.methods import methods_markdown as t; \
	p = pathlib.Path('docs/guide/methods.md'); s = p.read_text(); \
	a, b = '<!-- methods-table: start -->\n', '<!-- methods-table: end -->'; \
	p.write_text(s[: s.index(a) + len(a)] + t() + s[s.index(b) :])"

# The guide (mkdocs.yml, docs/) built into site/: mkdocs-material from the `docs` extra; the
# reference pages are generated from the params schema and the CLI parser while it builds.
$(BIN)/.docs-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --site-dir site

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-work:
	rm -rf work results/*.json .snakemake

# A local single-node SLURM (root; installs Debian's slurm-wlm, munge, slurmdbd and
# mariadb-server when missing) and the SLURM profile run on it for real (a few minutes).
SLURM_STATE ?= /tmp/hdmap-ad-slurm
.PHONY: slurm-up slurm-down test-slurm

slurm-up:
	HDMAP_AD_SLURM_STATE=$(SLURM_STATE) bash tests/cluster/slurm_up.sh

slurm-down:
	HDMAP_AD_SLURM_STATE=$(SLURM_STATE) bash tests/cluster/slurm_down.sh

test-slurm: install slurm-up
	SLURM_CONF=$(SLURM_STATE)/slurm.conf HDMAP_AD_SLURM_LIVE=1 PATH=$(abspath $(BIN)):$$PATH \
	  python -m pytest -q -s -p no:cacheprovider tests/cluster/test_slurm_live.py

# Deployment: the web app over this checkout's run (after `make demo`), the browser smoke test
# (installs Debian's chromium and chromium-driver when missing; writes docs/app_*.png from
# the demo's results) and the predict memory benchmark.
APP_PORT ?= 8501
.PHONY: app test-browser bench-predict

app: install
	PATH=$(abspath $(BIN)):$$PATH python -m hdmap_ad app --port $(APP_PORT)

test-browser: install
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	   chromium-driver)
	$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/python -m pip install -q 'selenium>=4.20'
	HDMAP_AD_SCREENSHOTS=docs PATH=$(abspath $(BIN)):$$PATH python -m pytest -q -rs tests/test_browser.py

bench-predict: install
	$(BIN)/python benchmarks/predict_memory.py
