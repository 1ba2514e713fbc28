# The two commands a newcomer needs: `make demo` and `make test`. Both install into .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := curate,shards,filter,train,notebooks,dev
OUT ?= out/demo

export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: .venv test demo lint bench clean help

help:
	@echo "make demo   - install into .venv, then run the pipeline on the embedded sample"
	@echo "make test   - install into .venv, then run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - run every benchmark in benchmarks/ (prints figures and baseline ratios)"
	@echo "make filter - de-duplicate, decontaminate, NSFW-filter and face-blur \$$(OUT)/shards into \$$(OUT)/filtered"
	@echo "make train  - a few steps of a tiny CLIP model on \$$(OUT)/shards (stage 5 smoke run)"
	@echo "make pack-env - dist/curation-env.tar.gz, the executors' Python for a Spark cluster"
	@echo "make train-online - pool shards of the demo run + a few steps with online curation"
	@echo "make sweep  - CPU scaling sweep on the digits set: 3 models x 3 durations, power-law fit"
	@echo "             (SWEEP_METRIC=zeroshot_linear_probe/lp_acc1: fit linear-probe accuracy)"

# Reruns are no-ops until pyproject.toml changes. The Spark class archive (curation/tools/spark_archive.py)
# is built once per venv: it halves a local Spark session's start-up.
.venv: $(STAMP)
	@$(PY) -m curation.tools.spark_archive || true

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

test: .venv
	$(PY) -m pytest -q --durations=15

demo: .venv
	$(PY) -m curation.tools.demo --output $(OUT)

lint: .venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: .venv
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf out spark-warehouse .pytest_cache

# Stage 1: metadata tables in $(OUT)/metadata from the embedded WordNet, wordfreq word lists and,
# when present, the truncated Wikipedia dumps in $(WIKI_DUMPS). Extra flags via METADATA_ARGS,
# e.g. METADATA_ARGS='--languages en,el,ja' or '--max-languages 10'.
WIKI_DUMPS ?= ../shared/data/wikipedia
METADATA_ARGS ?=
.PHONY: metadata
metadata: .venv
	@dumps=(); if compgen -G '$(WIKI_DUMPS)/*wiki-*.xml*' >/dev/null; then \
	  dumps=(--wikipedia-dumps '$(abspath $(WIKI_DUMPS))/*wiki-*.xml*'); \
	else echo "metadata: no Wikipedia dumps in $(WIKI_DUMPS), building from WordNet + wordfreq"; fi; \
	$(PY) jobs/build_metadata.py --wordnet curation/sample_data/wordnet "$${dumps[@]}" \
	  --output $(OUT) $(METADATA_ARGS)

# Stage 2: language-identified alt-text in $(OUT)/alt_text (and drop counts in $(OUT)/drops) from
# the embedded WARC capture, CC3M captions and WIT captions. Extra flags via ALT_TEXT_ARGS,
# e.g. ALT_TEXT_ARGS='--no-page-prior'.
ALT_TEXT_INPUTS ?= curation/sample_data/whirlwind.warc.gz curation/sample_data/cc3m_val_2k.tsv curation/sample_data/wit
ALT_TEXT_ARGS ?=
.PHONY: alt-text
alt-text: .venv
	$(PY) jobs/extract_alt_text.py --input $(ALT_TEXT_INPUTS) --output $(OUT) $(ALT_TEXT_ARGS)

# Stage 3: match $(OUT)/alt_text against $(OUT)/metadata, count, threshold and balance; writes
# $(OUT)/{matches,entry_counts,thresholds,curated}, run.json and _SUCCESS. The demo sample is tiny,
# so its English threshold is tiny too. Extra flags via CURATE_ARGS, e.g. CURATE_ARGS='--t-en 20 --format delta'.
CURATE_ARGS ?= --t-en 20
.PHONY: curate
curate: .venv
	$(PY) jobs/curate.py --metadata $(OUT)/metadata --input $(OUT)/alt_text --output $(OUT) $(CURATE_ARGS)

# Stage 5 on the shards `make shards` wrote (the demo: those `make filter` wrote): a few steps of a
# tiny CLIP model (CPU is fine).
TRAIN_ARGS ?= --model tiny-clip --batch-size 16 --steps 20 --warmup 5 --lr 1e-3 --precision fp32 --workers 1 --log-every 5
TRAIN_DATA ?= $(OUT)/shards
.PHONY: train
train: .venv
	$(PY) trainer/train.py --train-data $(TRAIN_DATA) --output-dir $(OUT)/train $(TRAIN_ARGS)

# Stage 4: WebDataset shards from a curated/ table (Parquet or Delta), written to $(OUT)/shards.
# Extra flags via SHARDS_ARGS, e.g. SHARDS_ARGS='--image-size 224 --processes 16'.
# POOL=matched exports every matched image with all its texts instead (for online curation)
# into $(OUT)/pool_shards.
CURATED ?= $(OUT)/curated
SHARDS_ARGS ?=
POOL ?= curated
SHARDS_OUT ?= $(OUT)/$(if $(filter matched,$(POOL)),pool_shards,shards)
.PHONY: shards
shards: .venv
	$(PY) jobs/export_shards.py --curated $(CURATED) --output $(SHARDS_OUT) --pool $(POOL) $(SHARDS_ARGS)

# Stage 4b: image safety and de-duplication on the shards `make shards` wrote: exact and pHash
# near-copies across the whole set, evaluation images (FILTER_ARGS='--eval-sets DIR'), blocklists,
# NSFW, faces blurred; writes $(OUT)/filtered/shards (the same layout) and $(OUT)/filtered/image_filter.
# Rules and measurements: docs/filtering.md.
FILTER_IN ?= $(OUT)/shards
FILTER_ARGS ?=
.PHONY: filter
filter: .venv
	$(PY) jobs/filter_images.py --shards $(FILTER_IN) --output $(OUT)/filtered $(FILTER_ARGS)

# Online curation (MetaCLIP 2's training-time balancing) on the demo run: pool shards, then a few
# steps that balance them per epoch from $(OUT)'s entry_counts (docs/online-curation.md).
DEMO_SHARDS_ARGS ?= --serve-local skimage --processes 2 --threads 16 --timeout 5 --samples-per-shard 500
.PHONY: train-online
train-online: .venv
	$(MAKE) shards POOL=matched SHARDS_ARGS='$(DEMO_SHARDS_ARGS)'
	$(PY) trainer/train.py --train-data $(OUT)/pool_shards --online-curation $(OUT) \
	  --output-dir $(OUT)/train_online $(TRAIN_ARGS)

# The executors' Python environment for a Spark cluster (docs/operations.md): what the curate and
# shards extras need, without torch, with this checkout's curation package; bin/python links are
# checked. On a cluster whose nodes keep Python elsewhere: PACK_ENV_ARGS='--python-prefix /usr'.
PACK_ENV_ARGS ?=
.PHONY: pack-env
pack-env: .venv
	$(PY) -m curation.tools.pack_env --output dist/curation-env.tar.gz $(PACK_ENV_ARGS)

# Analyst report on the curation run in $(OUT) (run `make curate` first): writes the standalone
# $(OUT)/report.html (plots embedded) and prints its path. Notebooks: notebooks/*.ipynb.
REPORT_ARGS ?=
.PHONY: report
report: .venv
	$(PY) -m curation.report $(OUT) --html $(OUT)/report.html $(REPORT_ARGS)

# A CPU scaling sweep on the digits set (python -m trainer.datasets digits): every model of
# SWEEP_MODELS trained for every duration of SWEEP_STEPS, zero-shot evaluated every
# SWEEP_EVAL_EVERY steps, then E = beta * C^alpha fitted on the Pareto front (trainer.scaling):
# $(SWEEP_OUT)/fit.json and fit.png. About 6 minutes on 2 cores. SWEEP_METRIC picks the fitted
# eval key: zeroshot_linear_probe/lp_acc1 adds a linear probe on the frozen image features to
# every evaluation (trainer.linear_probe; a few seconds each) and fits its accuracy instead.
SWEEP_OUT ?= out/sweep
SWEEP_METRIC ?= zeroshot/acc1
SWEEP_PROBE = $(if $(findstring linear_probe,$(SWEEP_METRIC)),--eval $(SWEEP_OUT)/digits/zeroshot:linear_probe)
SWEEP_MODELS ?= tiny-clip-w32 tiny-clip tiny-clip-w128
SWEEP_STEPS ?= 60 120 240
SWEEP_EVAL_EVERY ?= 20
SWEEP_ARGS ?= --batch-size 64 --lr 2e-3 --precision fp32 --workers 1 --log-every 20
.PHONY: sweep
sweep: .venv
	$(PY) -m trainer.datasets digits $(SWEEP_OUT)/digits
	rm -rf $(SWEEP_OUT)/runs
	@for m in $(SWEEP_MODELS); do for s in $(SWEEP_STEPS); do \
	  echo "== $$m, $$s steps"; \
	  $(PY) trainer/train.py --train-data $(SWEEP_OUT)/digits/train --model $$m --steps $$s \
	    --warmup $$((s / 10)) --save-every $$s --keep-checkpoints 1 $(SWEEP_ARGS) \
	    --eval $(SWEEP_OUT)/digits/zeroshot $(SWEEP_PROBE) --eval-every $(SWEEP_EVAL_EVERY) \
	    --eval-languages en \
	    --output-dir $(SWEEP_OUT)/runs/$$m-$$s | grep -E "^eval at step $$s " || exit 1; \
	done; done
	$(PY) -m trainer.scaling $(SWEEP_OUT)/runs/* --metric $(SWEEP_METRIC) \
	  --x train_flops,samples_seen --output $(SWEEP_OUT)/fit.json --plot $(SWEEP_OUT)/fit.png
