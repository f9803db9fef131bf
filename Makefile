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

.PHONY: setup setup-edge setup-gpu constraints demo people-demo test test-fast test-zoo clean

# Everything (training, export, tests) at the exact versions CI uses (constraints.txt); the package
# metadata in setup.cfg keeps version ranges.
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[all,dev]' -c constraints.txt
	touch $@

# The edge runtime alone (det-run, det-label, det-eval of .onnx; no PyTorch), e.g.
# `make setup-edge VENV=.venv-edge` (a fresh folder: installing into a full venv removes nothing).
setup-edge:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e . -c constraints.txt

# NVIDIA GPUs: the [gpu] extra, then ONNX Runtime's GPU build as the only owner of the `onnxruntime`
# module (the CPU build the base install pulls in would shadow it: no CUDAExecutionProvider).
setup-gpu: setup
	$(BIN)/python -m pip install -e '.[all,gpu,dev]' -c constraints.txt
	$(BIN)/python -m pip uninstall -y onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install "onnxruntime-gpu>=1.20,<2" -c constraints.txt

# Rewrite constraints.txt from the packages now in $(VENV) (after upgrading some there on purpose).
constraints:
	{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | \
	  grep -v -i -e '^det-toolkit' -e '^#'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

demo: setup
	$(BIN)/det-train --data configs/raccoon.yaml --epochs $(EPOCHS) --workers 0 --project runs/train --name $(NAME)
	$(BIN)/det-export runs/train/$(NAME)/weights/best.pt
	$(BIN)/det-eval --weights runs/train/$(NAME)/weights/best.onnx --data configs/raccoon.yaml --project runs/eval --name $(NAME)
	sed 's|^|$(abspath $(RACCOON))/images/|; s|$$|.jpg|' $(RACCOON)/val.txt > runs/train/$(NAME)/val_images.txt
	$(BIN)/det-run runs/train/$(NAME)/val_images.txt --weights runs/train/$(NAME)/weights/best.onnx --project runs/run --name $(NAME)-val
	$(BIN)/det-run $(VIDEO) --weights runs/train/$(NAME)/weights/best.onnx --track --project runs/run --name $(NAME)-video

# Pedestrians on the street video: label frames 0-499 with OpenCV's HOG people detector (machine
# labels, not human annotation), train on them, track people on the unseen frames 500-794 (~15 min
# on 2 idle CPU cores, much longer on a shared machine). Outputs under $(PEOPLE); the GIF goes to
# benchmarks/reports/vtest_people.gif.
PEOPLE ?= /tmp/people
people-demo: setup
	rm -rf $(PEOPLE)/data $(PEOPLE)/runs/people $(PEOPLE)/eval/people $(PEOPLE)/run/unseen
	$(BIN)/det-label $(VIDEO) --teacher hog --hog-upscale 1.5 --end 500 --every 4 --format voc --out $(PEOPLE)/data
	$(BIN)/det-train --data $(PEOPLE)/data/data.yaml --imgsz 448 --epochs 16 --workers 0 --anchors auto --aug-set scale=0.75:1.0 --rpn-post-nms-train 300 --roi-batch 64 --project $(PEOPLE)/runs --name people
	$(BIN)/det-export $(PEOPLE)/runs/people/weights/best.pt
	$(BIN)/det-eval --weights $(PEOPLE)/runs/people/weights/best.onnx --data $(PEOPLE)/data/data.yaml --split val --project $(PEOPLE)/eval --name people
	$(BIN)/python -m det_toolkit.benchmarks.people_demo clip $(VIDEO) $(PEOPLE)/unseen.avi --start 500
	$(BIN)/det-run $(PEOPLE)/unseen.avi --weights $(PEOPLE)/runs/people/weights/best.onnx --track --project $(PEOPLE)/run --name unseen
	$(BIN)/python -m det_toolkit.benchmarks.people_demo tracks $(PEOPLE)/run/unseen/predictions.jsonl
	$(BIN)/python -m det_toolkit.benchmarks.people_demo gif $(PEOPLE)/run/unseen/unseen.mp4 $(PEOPLE)/run/unseen/predictions.jsonl benchmarks/reports/vtest_people.gif

# Code checks: ruff, then the one-way layers of .importlinter (benchmarks > export > train > runtime >
# configs), checked by import-linter on the package laid out as installed under build/lint
# (.ci/lint_imports.py says why a plain `lint-imports` in the checkout would check nothing).
.PHONY: lint
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python .ci/lint_imports.py

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not zoo"

test-zoo: setup
	$(BIN)/python -m pytest -q -m zoo

clean:
	rm -rf $(VENV) build *.egg-info
