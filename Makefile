# `make test` and `make demo` each set everything up on a fresh machine, then run.
# A second run skips the set-up: the stamp depends on the files that define the dependencies.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.medmoe-deps.stamp
CACHE  := .cache
TOTALSEG := $(CACHE)/totalsegmentator-2.18.0.tar.gz

# Sample packages that must come without their dependencies (docs/data.md): they would pull TensorFlow or torchvision.
NODEPS := torchxrayvision==1.5.7 pneumonia-model-package==0.3.0 \
          pydicom-data==1.0.0 deid-data==0.0.20

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The browser test of `medmoe serve` drives Debian's headless Chromium (tests/serve/test_serve_browser.py).
CHROMIUM     := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
SUDO         := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup browser test test-fast demo bench lint clean

setup: $(STAMP) $(TOTALSEG)

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,samples]"
	$(PIP) install --no-deps $(NODEPS)
	touch $@

# Real CTs with TotalSegmentator masks ship only in the sdist's tests/ folder (docs/data.md). medmoe_samples reads
# it from here by default (`medmoe seg build-samples --totalseg-sdist PATH` or $MEDMOE_TOTALSEG_SDIST for another).
$(TOTALSEG): | $(PY)
	mkdir -p $(CACHE)
	$(PIP) download --no-deps --no-binary :all: totalsegmentator==2.18.0 -d $(CACHE)

# Installs chromium + chromium-driver, without recommended packages, when either is missing (CI runs as root;
# elsewhere through sudo).
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver; \
	fi

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ddp"

demo: setup
	$(VENV)/bin/medmoe demo --out demo_out

bench: setup
	$(PY) benchmarks/bench_moe.py

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info src/*.egg-info
