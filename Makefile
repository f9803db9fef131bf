# det-toolkit: two commands for a fresh machine.
#   make demo  - set up, then train on the raccoon photos, export to ONNX, run the street video with
#                Deep SORT tracking and annotate the raccoon val images (CPU, ~30-40 min)
#   make test  - set up, then run the whole test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RACCOON ?= $(if $(DET_DATA_RACCOON),$(DET_DATA_RACCOON),../shared/datasets/raccoon)
VIDEO ?= ../shared/videos/vtest.avi
EPOCHS ?= 12
ifndef NAME
NAME := raccoon-$(shell date +%Y%m%d-%H%M%S)
endif

.PHONY: setup demo test test-fast test-zoo clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/det-train --data configs/raccoon.yaml --epochs $(EPOCHS) --workers 0 --project runs/train --name $(NAME)
	$(BIN)/det-export runs/train/$(NAME)/weights/best.pt
	$(BIN)/det-eval --weights runs/train/$(NAME)/weights/best.onnx --data configs/raccoon.yaml --project runs/eval --name $(NAME)
	sed 's|^|$(abspath $(RACCOON))/images/|; s|$$|.jpg|' $(RACCOON)/val.txt > runs/train/$(NAME)/val_images.txt
	$(BIN)/det-run runs/train/$(NAME)/val_images.txt --weights runs/train/$(NAME)/weights/best.onnx --project runs/run --name $(NAME)-val
	$(BIN)/det-run $(VIDEO) --weights runs/train/$(NAME)/weights/best.onnx --track --project runs/run --name $(NAME)-video

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not zoo"

test-zoo: setup
	$(BIN)/python -m pytest -q -m zoo

clean:
	rm -rf $(VENV) build *.egg-info
