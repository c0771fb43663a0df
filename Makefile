# SliderGAN — every target is a thin wrapper over the `slidergan` CLI (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SG := $(VENV)/bin/slidergan
STAMP := $(VENV)/.setup-stamp
export PYOPENGL_PLATFORM ?= osmesa

RUN ?= runs/demo
PRESET ?= demo
CONFIG ?= config/$(PRESET).yaml
VARIANT ?= rad
WORKERS ?= 2
CLUSTER ?= local
STAGE_OPTS = --config $(CONFIG) --cluster $(CLUSTER) --workers $(WORKERS)
IMAGES ?= $(RUN)/emotionet
MODEL ?= $(RUN)/model.h5
MESHES ?= $(RUN)/4dfab
FITS ?= $(RUN)/fits
WARPS ?= $(RUN)/warps
PARAMS ?= $(RUN)/4dfab-params
VIDEOS ?= $(RUN)/lrw/lipread_mp4
SPEECH ?= $(RUN)/lrw/lrw3d
LRW_FITS ?= $(RUN)/lrw-fits
TRAIN_OUT ?= $(RUN)/train/$(VARIANT)
CHECKPOINT ?= $(TRAIN_OUT)/checkpoints/latest.pt
EVAL_OUT ?= $(RUN)/eval
BENCH_OUT ?= bench
APT_PACKAGES := libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa chromium chromium-driver

.PHONY: setup system-packages demo test bench make-demo fit-emotionet render-warps project-4dfab fit-lrw train evaluate serve clean-venv

setup: system-packages $(STAMP)

# Debian packages for headless rendering (OSMesa/EGL) and the browser tests.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	    || { echo "error: apt-get install$$missing failed" >&2; exit 1; }; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then echo "installing Debian packages:$$missing"; \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "error: missing Debian packages:$$missing — run as root: apt-get install$$missing" >&2; exit 1; fi; \
	fi

$(STAMP): requirements/base.txt requirements/nodeps.txt requirements/menpo.txt requirements/constraints.txt pyproject.toml | system-packages
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel 'setuptools<70' 'cython<3' numpy -c requirements/constraints.txt
	$(PY) -m pip install -q -r requirements/base.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-build-isolation -r requirements/menpo.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -r requirements/nodeps.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: setup
	$(SG) demo --out $(RUN) --config $(CONFIG) --workers $(WORKERS)

test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	$(SG) bench --out $(BENCH_OUT)

make-demo: setup
	$(SG) make-demo --out $(RUN)

fit-emotionet: setup
	@if [ "$(IMAGES)" = "$(RUN)/emotionet" ] && [ ! -d "$(IMAGES)" ]; then $(SG) make-demo --out $(RUN); fi
	$(SG) fit-emotionet --images $(IMAGES) --model $(MODEL) --out $(FITS) $(STAGE_OPTS)

render-warps: setup
	$(SG) render-warps --fits $(FITS) --model $(MODEL) --out $(WARPS) $(STAGE_OPTS)

project-4dfab: setup
	@if [ "$(MESHES)" = "$(RUN)/4dfab" ] && [ ! -d "$(MESHES)" ]; then $(SG) make-demo --out $(RUN); fi
	$(SG) project-4dfab --meshes $(MESHES) --model $(MODEL) --out $(PARAMS) $(STAGE_OPTS)

fit-lrw: setup
	@if [ "$(VIDEOS)" = "$(RUN)/lrw/lipread_mp4" ] && [ ! -d "$(VIDEOS)" ]; then $(SG) make-demo --out $(RUN); fi
	$(SG) fit-lrw --videos $(VIDEOS) --speech $(SPEECH) --model $(MODEL) --out $(LRW_FITS) $(STAGE_OPTS)

train: setup
	$(SG) train --data $(RUN) --variant $(VARIANT) --out $(TRAIN_OUT) --config $(CONFIG)

evaluate: setup
	$(SG) evaluate --checkpoint $(CHECKPOINT) --data $(RUN) --out $(EVAL_OUT) --config $(CONFIG)

serve: setup
	$(SG) serve --checkpoint $(CHECKPOINT) --port 8000

clean-venv:
	rm -rf $(VENV)
