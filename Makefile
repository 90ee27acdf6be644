# otl — make install | report | engines | demo | test | test-all | bench | clean
# Everything runs inside .venv (created by `make install`). Variables can be set on the command line:
#   make engines PRECISION=int8 MODEL=densenet169 CUT=denseblock4.12 WEIGHTS=random DATA=path/to/images
#   (int8: REFINE=64 picks each threshold by the feature error on 64 calibration images)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OTL := $(VENV)/bin/otl
# This machine serves these torch builds from local disk; elsewhere override (TORCH_PINS=) to keep yours.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

MODEL ?= densenet169
CUT ?=
WEIGHTS ?= imagenet
PRECISION ?= fp32
BACKEND ?= auto
DATA ?=
OUT ?=
THREADS ?=
REFINE ?=
TESTS ?= tests
PYTEST_ARGS ?= -m "not slow"

cut_arg = $(if $(CUT),--cut $(CUT))
data_arg = $(if $(DATA),--data $(DATA))
out_arg = $(if $(OUT),--out $(OUT))
threads_arg = $(if $(THREADS),--threads $(THREADS))
refine_arg = $(if $(REFINE),--refine-images $(REFINE))

.PHONY: install install-opu report engines demo test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_PINS),$(PY) -m pip install -q $(TORCH_PINS))
	$(PY) -m pip install -q -e '.[dev,opu]'
	$(MAKE) --no-print-directory install-opu
	touch $@

# lightonml 1.4.3 pins dependencies that no longer build on Python 3.11: install it without them.
install-opu:
	$(PY) -m pip install -q --no-deps lightonml==1.4.3
	$(PY) -m pip install -q numexpr attrs requests "setuptools<81"

engines: install
	$(OTL) engines --model $(MODEL) $(cut_arg) --weights $(WEIGHTS) --precision $(PRECISION) \
		--backend $(BACKEND) $(data_arg) $(out_arg) $(threads_arg) $(refine_arg)

# The main job on the embedded digits, offline: builds at three precisions and two cuts, fits over
# seeds, the K and recipe sweeps, int8 sensitivity and the backprop baseline -> reports/digits/.
# (Cuts before features.15: deeper, a random-init MobileNetV2's activations fall below fp16's range.)
REPORT_OUT ?= reports/digits
report: install
	$(OTL) report --model mobilenet_v2 --weights random --input-size 64 --cuts features.7,features.14 \
		--precisions fp32,fp16,int8 --n-components 500,1000 --seeds 3 --baseline-epochs 2 \
		--calibration-images 128 --sensitivity-images 4 $(threads_arg) --out $(REPORT_OUT)

demo: install
	$(OTL) engines --model mobilenet_v2 --weights random --precision fp32 --input-size 64 --out builds/demo-fp32
	$(OTL) fit --build builds/demo-fp32 --out builds/demo-model.npz
	$(OTL) evaluate --model builds/demo-model.npz

test: install
	$(PY) -m pytest $(TESTS) $(PYTEST_ARGS) -q

test-all: install
	$(PY) -m pytest $(TESTS) -q

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf builds reports/digits .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
