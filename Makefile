# det-toolkit on a fresh machine (each target sets up .venv first; outputs under runs/, untracked).
#   make demo            - the people demo on human labels: convert Penn-Fudan (170 street photos, 423
#                          hand-drawn pedestrian boxes) to COCO, train the default recipe on it, export
#                          to ONNX (parity checked), det-eval on its val split, track people on the
#                          street video, write the README's GIF and the domain-gap report (CPU, ~30 min)
#   make demo-raccoon    - the VOC example: train on the raccoon photos (12 epochs), export, det-eval,
#                          annotate the val images, track on the street video
#   make people-demo-hog - a det-label example: label street-video frames with OpenCV's HOG people
#                          detector (machine labels), train on them, track people on the unseen frames
#   make test            - the whole test suite (slow end-to-end tests included); make test-fast skips them
# NAME=x names the run folders (default: a time stamp); EPOCHS=n overrides the recipe's epochs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RACCOON ?= $(if $(DET_DATA_RACCOON),$(DET_DATA_RACCOON),../shared/datasets/raccoon)
PENNFUDAN ?= $(if $(DET_DATA_PENNFUDAN),$(DET_DATA_PENNFUDAN),../shared/datasets/pennfudan)
VIDEO ?= ../shared/videos/vtest.avi
EPOCHS ?=
STAMP := $(shell date +%Y%m%d-%H%M%S)
NAME ?= $(STAMP)

.PHONY: setup setup-edge setup-gpu constraints demo demo-raccoon people-demo-hog test test-fast test-zoo clean

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

# The people demo: Penn-Fudan converted to COCO under runs/data (images symlinked), the default recipe
# (epochs and input size chosen from the data, printed first), then the street video.
PEOPLE_DATA ?= runs/data/pennfudan-coco
PEOPLE_RUN := people-$(NAME)
# vtest's walkers are far and small, Penn-Fudan's near and large: run at the video's own width,
# rectangular (768x576 instead of 416x416 letterboxed; docs/runtime.md, "People on vtest")
PEOPLE_RUN_FLAGS ?= --imgsz 768 --rect
demo: setup
	rm -rf $(PEOPLE_DATA)
	$(BIN)/det-convert $(PENNFUDAN) --to coco --images symlink --out $(PEOPLE_DATA)
	$(BIN)/det-train --data $(PEOPLE_DATA)/data.yaml $(if $(EPOCHS),--epochs $(EPOCHS)) --project runs/train --name $(PEOPLE_RUN)
	$(BIN)/det-export runs/train/$(PEOPLE_RUN)/weights/best.pt
	$(BIN)/det-eval --weights runs/train/$(PEOPLE_RUN)/weights/best.onnx --data $(PEOPLE_DATA)/data.yaml --split val --project runs/eval --name $(PEOPLE_RUN)
	$(BIN)/det-run $(VIDEO) --weights runs/train/$(PEOPLE_RUN)/weights/best.onnx --track $(PEOPLE_RUN_FLAGS) --project runs/run --name $(PEOPLE_RUN)-video
	$(BIN)/python -m det_toolkit.benchmarks.people_demo gif runs/run/$(PEOPLE_RUN)-video/$(basename $(notdir $(VIDEO))).mp4 runs/run/$(PEOPLE_RUN)-video/predictions.jsonl benchmarks/reports/vtest_people.gif
	$(BIN)/python -m det_toolkit.benchmarks.people_demo report $(VIDEO) runs/run/$(PEOPLE_RUN)-video/predictions.jsonl --every 5

# The raccoon VOC example (the first demo): 12 epochs unless EPOCHS is given.
RACCOON_RUN := raccoon-$(NAME)
demo-raccoon: setup
	$(BIN)/det-train --data configs/raccoon.yaml --epochs $(or $(EPOCHS),12) --project runs/train --name $(RACCOON_RUN)
	$(BIN)/det-export runs/train/$(RACCOON_RUN)/weights/best.pt
	$(BIN)/det-eval --weights runs/train/$(RACCOON_RUN)/weights/best.onnx --data configs/raccoon.yaml --project runs/eval --name $(RACCOON_RUN)
	sed 's|^|$(abspath $(RACCOON))/images/|; s|$$|.jpg|' $(RACCOON)/val.txt > runs/train/$(RACCOON_RUN)/val_images.txt
	$(BIN)/det-run runs/train/$(RACCOON_RUN)/val_images.txt --weights runs/train/$(RACCOON_RUN)/weights/best.onnx --project runs/run --name $(RACCOON_RUN)-val
	$(BIN)/det-run $(VIDEO) --weights runs/train/$(RACCOON_RUN)/weights/best.onnx --track --project runs/run --name $(RACCOON_RUN)-video

# A det-label example, pedestrians from machine labels: label frames 0-499 of the street video with
# OpenCV's HOG people detector (not human annotation), train on them, track people on the unseen frames
# 500-794 (~15 min on 2 idle CPU cores, much longer on a shared machine). Everything under $(PEOPLE),
# its GIF included.
PEOPLE ?= /tmp/people
people-demo-hog: setup
	rm -rf $(PEOPLE)/data $(PEOPLE)/runs/people $(PEOPLE)/eval/people $(PEOPLE)/run/unseen
	$(BIN)/det-label $(VIDEO) --teacher hog --hog-upscale 1.5 --end 500 --every 4 --format voc --out $(PEOPLE)/data
	$(BIN)/det-train --data $(PEOPLE)/data/data.yaml --imgsz 448 --epochs 16 --anchors auto --aug-set scale=0.75:1.0 --rpn-post-nms-train 300 --roi-batch 64 --project $(PEOPLE)/runs --name people
	$(BIN)/det-export $(PEOPLE)/runs/people/weights/best.pt
	$(BIN)/det-eval --weights $(PEOPLE)/runs/people/weights/best.onnx --data $(PEOPLE)/data/data.yaml --split val --project $(PEOPLE)/eval --name people
	$(BIN)/python -m det_toolkit.benchmarks.people_demo clip $(VIDEO) $(PEOPLE)/unseen.avi --start 500
	$(BIN)/det-run $(PEOPLE)/unseen.avi --weights $(PEOPLE)/runs/people/weights/best.onnx --track --project $(PEOPLE)/run --name unseen
	$(BIN)/python -m det_toolkit.benchmarks.people_demo tracks $(PEOPLE)/run/unseen/predictions.jsonl
	$(BIN)/python -m det_toolkit.benchmarks.people_demo gif $(PEOPLE)/run/unseen/unseen.mp4 $(PEOPLE)/run/unseen/predictions.jsonl $(PEOPLE)/vtest_people_hog.gif

# Code checks: ruff, then the one-way layers of .importlinter (benchmarks > export > train > runtime >
# configs), checked by import-linter on the package laid out as installed under build/lint
# (.ci/lint_imports.py says why a plain `lint-imports` in the checkout would check nothing).
.PHONY: lint
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python .ci/lint_imports.py

# the Ray tests start Ray, which must see only loopback: they run in a network namespace of their own (root)
test: setup
	$(BIN)/python -m pytest -q -m "not zoo and not ray"
	unshare -n sh -c 'ip link set lo up && $(BIN)/python -m pytest -q -m ray'

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not zoo"

test-zoo: setup
	$(BIN)/python -m pytest -q -m zoo

clean:
	rm -rf $(VENV) build *.egg-info
