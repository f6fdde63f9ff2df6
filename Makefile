# Two commands do all the set-up: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.diffusa-installed
RUN     ?= runs/demo
TRAIN_RUN ?= runs/demo-train
export MPLCONFIGDIR   := $(CURDIR)/.cache/matplotlib
export TORCH_HOME     := $(CURDIR)/.cache/torch
export HF_HOME        := $(CURDIR)/.cache/huggingface
export XDG_CACHE_HOME := $(CURDIR)/.cache/xdg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-train serve test test-benchmarks lint browser clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# the CPU build of torch first, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `make demo`: the shipped models, no training (about a minute after set-up); `make demo-train` trains a fresh one.
# --force: the demo owns $(RUN), whose files an older diffusa wrote without the mark `--out` looks for.
demo: $(STAMP)
	mkdir -p $(RUN)
	$(VENV)/bin/diffusa generate "a handwritten seven" --n 16 --out $(RUN)/seven.png --force
	$(VENV)/bin/diffusa generate "the number 2 written by hand" --n 16 --out $(RUN)/two.png --force
	$(VENV)/bin/diffusa generate --n 64 --out $(RUN)/pixel.png --force
	$(VENV)/bin/diffusa inpaint mnist5k:3,105,207,309,411,513,615,717,819,921 --mask center \
		--out $(RUN)/inpaint.png --strip $(RUN)/inpaint-strip.png --force  # the shipped mnist-inpaint
	$(VENV)/bin/diffusa eval mnist-text --label all --guidance-scale 3 --n 200 --sampler dpmpp_2m --steps 20 \
		--out $(RUN)/text_metrics.json --force
	$(VENV)/bin/diffusa eval mnist-pixel --n 200 --out $(RUN)/pixel_metrics.json --force  # its recommended sampler

demo-train: $(STAMP)
	rm -rf $(TRAIN_RUN)
	$(VENV)/bin/diffusa forward --data mnist5k --out $(TRAIN_RUN)/forward.png
	$(VENV)/bin/diffusa train --data mnist5k --class-conditional --budget 10 --out $(TRAIN_RUN)
	$(VENV)/bin/diffusa sample $(TRAIN_RUN) --n 64 --label all --sampler dpmpp_2m_sde --steps 20 --eta 3 \
		--out $(TRAIN_RUN)/grid.png --trajectory $(TRAIN_RUN)/trajectory.png
	$(VENV)/bin/diffusa eval $(TRAIN_RUN) --n 1000 --label all --sampler dpmpp_2m_sde --steps 20 --eta 3 \
		--out $(TRAIN_RUN)/metrics.json

# `make serve`: the web page and REST API over the shipped models and the runs under runs/ (docs/serve.md)
serve: $(STAMP)
	mkdir -p runs
	$(VENV)/bin/diffusa serve --runs runs

# The page's browser test drives Debian's Chromium through its driver: CI (root) installs them when missing;
# elsewhere the test skips with one line saying what is missing.
browser:
ifneq ($(CI),)
	@command -v chromedriver >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
endif

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts

# Two workers, one file each at a time (module fixtures are built once); each test uses one torch thread.
# The benchmark scripts' quick modes (marked `benchmark`, about 9 worker-minutes) are `make test-benchmarks`, which
# .ci/run runs after `make test`, so `make test` stays under ten minutes.
test: $(STAMP) lint browser
	$(PY) -m pytest -n 2 --dist loadfile -m "not benchmark"

test-benchmarks: $(STAMP)
	$(PY) -m pytest -n 2 --dist load -m benchmark

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
