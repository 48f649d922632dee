# The commands the README shows; CI (.ci/run) runs `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bundle lodo seed benchmark pi-check live-page clean

$(BIN)/edgeseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/edgeseg           ## create .venv and install everything (runtime, training, tests)

demo: setup                     ## bundled model on a real street clip -> out/demo/demo.mp4, FPS printed
	$(BIN)/edgeseg demo

# The suite runs on every core (at most 4 workers: each holds a TensorFlow): most of its time is
# single-threaded graph building and subprocesses, so 2 workers on 2 cores take 14 min, not 22.
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4

test: setup                     ## the whole suite (slow cases included), as CI runs it
	$(PYTEST)

test-fast: setup                ## skip the slow cases
	$(PYTEST) -m "not slow"

# Calibration and the agreement gates (val and three clips no model saw) of both bundled exports.
BUNDLE_CHECKS := --calib-data ../shared/data/camvid --calib-split training \
  --eval-data ../shared/data/camvid --eval-split validation --min-agreement 0.98 \
  --check-video ../shared/data/video/vtest.avi --check-video ../shared/data/video/car-detection.mp4 \
  --check-video edgeseg/assets/solidWhiteRight.mp4 --output models

bundle: setup                   ## retrain and re-export the bundled model (three runs from scratch, 3-6 h on 2 cores)
	$(BIN)/python -m train --config configs/camvid_lite.yaml          # seed 7 -> runs/camvid_lite/last.keras
	$(BIN)/python -m train --config configs/camvid_lite_seed8.yaml    # seed 8 -> runs/camvid_lite_seed8/last.keras
	$(BIN)/python -m train --config configs/camvid_lite_seed9.yaml    # seed 9 -> runs/camvid_lite_seed9/last.keras
	$(BIN)/python -m train average runs/camvid_lite/last.keras runs/camvid_lite_seed8/last.keras \
	  runs/camvid_lite_seed9/last.keras -o runs/camvid_lite_triple/last.keras   # one graph, the mean of the three's logits
	$(BIN)/python -m train resize runs/camvid_lite_triple/last.keras --height 288 --width 384 \
	  -o runs/camvid_lite_triple384/last.keras                         # run at 384x288: same weights (FixRes)
	$(BIN)/python -m train snap-weights runs/camvid_lite_triple384/last.keras # -> last_w8.keras, int8-grid kernels
	$(BIN)/python -m convert --model runs/camvid_lite_triple384/last_w8.keras --quantize all --name camvid_lite $(BUNDLE_CHECKS)
	$(BIN)/python -m train snap-weights runs/camvid_lite/last.keras   # the first network alone: camvid_lite_fast
	$(BIN)/python -m convert --model runs/camvid_lite/last_w8.keras --quantize int8 --name camvid_lite_fast $(BUNDLE_CHECKS)
	cp runs/camvid_lite_triple384/last_w8.keras models/camvid_lite.keras
	cp runs/camvid_lite/history.csv models/camvid_lite_history.csv
	cp runs/camvid_lite/training_curves.png models/camvid_lite_training_curves.png
	cp runs/camvid_lite_seed8/history.csv models/camvid_lite_seed8_history.csv
	cp runs/camvid_lite_seed8/training_curves.png models/camvid_lite_seed8_training_curves.png
	cp runs/camvid_lite_seed9/history.csv models/camvid_lite_seed9_history.csv
	cp runs/camvid_lite_seed9/training_curves.png models/camvid_lite_seed9_training_curves.png
	cp configs/camvid_lite.yaml models/camvid_lite_config.yaml
	cp configs/camvid_lite_seed8.yaml models/camvid_lite_seed8_config.yaml
	cp configs/camvid_lite_seed9.yaml models/camvid_lite_seed9_config.yaml
	mv models/camvid_lite_int8.tflite edgeseg/assets/camvid_lite_int8.tflite   # shipped in the wheel
	ln -sf ../edgeseg/assets/camvid_lite_int8.tflite models/camvid_lite_int8.tflite
	mv models/camvid_lite_fast_int8.tflite edgeseg/assets/camvid_lite_fast_int8.tflite
	ln -sf ../edgeseg/assets/camvid_lite_fast_int8.tflite models/camvid_lite_fast_int8.tflite

lodo: setup                     ## the leave-one-drive-out runs that chose the bundled recipe (configs/lodo/README.md)
	for config in $$(ls configs/lodo/*.yaml | grep -v /distill) configs/lodo/distill*.yaml; do \
	  $(BIN)/python -m train --config $$config || exit 1; done   # distillation runs need their teachers first

seed: setup                     ## train + convert the seed-size U-Net (tutorial architecture, half width, BatchNorm), not committed
	$(BIN)/python -m train --config configs/camvid_unet_seed_bn.yaml
	$(BIN)/python -m convert --model runs/camvid_unet_seed_bn/best.keras --quantize float32 --quantize all \
	  --name camvid_unet_seed_bn --calib-data ../shared/data/camvid --calib-split training \
	  --eval-data ../shared/data/camvid --eval-split validation --out-dir runs/camvid_unet_seed_bn/export; \
	  status=$$?; cp runs/camvid_unet_seed_bn/export/camvid_unet_seed_bn_report.* models/; exit $$status

SEED := runs/camvid_unet_seed_bn
DEVICE ?= $(shell hostname)

benchmark: setup                ## latency of the bundled and (after `make seed`) seed models -> benchmarks/results/<DEVICE>.jsonl
	$(BIN)/python -m benchmarks --device-name "$(DEVICE)" \
	  --model models/camvid_lite_int8.tflite --model models/camvid_lite_fast_int8.tflite \
	  --model models/camvid_lite_float16.tflite \
	  $(if $(wildcard $(SEED)/export/camvid_unet_seed_bn_int8*.tflite),\
	  --model $(firstword $(wildcard $(SEED)/export/camvid_unet_seed_bn_int8*.tflite)) \
	  --model $(SEED)/export/camvid_unet_seed_bn_float32.tflite \
	  --model $(SEED)/export/camvid_unet_seed_bn_float16.tflite \
	  --keras $(SEED)/best.keras) \
	  --threads 1,2 --video ../shared/data/video/vtest.avi --realtime 30 --keras models/camvid_lite.keras

pi-check: setup                 ## the runtime as an aarch64 process (qemu user mode, Debian arm64 python3.11) vs x86
	@command -v qemu-aarch64-static >/dev/null || (apt-get update -qq && apt-get install -y -qq qemu-user-static)
	$(BIN)/python tools/pi_check.py

live-page: setup                ## regenerate docs/live_page.png (headless chromium)
	bash docs/live_page.sh

clean:
	rm -rf $(VENV) out .pytest_cache
