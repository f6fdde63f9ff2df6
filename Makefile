# Two commands do all the set-up: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.diffusa-installed
RUN     ?= runs/demo
export MPLCONFIGDIR   := $(CURDIR)/.cache/matplotlib
export TORCH_HOME     := $(CURDIR)/.cache/torch
export HF_HOME        := $(CURDIR)/.cache/huggingface
export XDG_CACHE_HOME := $(CURDIR)/.cache/xdg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# the CPU build of torch first, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(RUN)
	$(VENV)/bin/diffusa forward --data mnist5k --out $(RUN)/forward.png
	$(VENV)/bin/diffusa train --data mnist5k --out $(RUN)
	$(VENV)/bin/diffusa sample $(RUN) --n 64 --steps 50 --out $(RUN)/grid.png --trajectory $(RUN)/trajectory.png
	$(VENV)/bin/diffusa eval $(RUN) --n 500 --steps 50 --out $(RUN)/metrics.json

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts

test: $(STAMP) lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
