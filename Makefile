# Likeness: `make demo` and `make test` do all their set-up on a fresh machine (idempotent, fast on re-runs).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup demo test bench correspondence albedo-model generator clean
.DEFAULT_GOAL := demo

$(STAMP): requirements.txt requirements-runtime.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Every asset the backend needs (idempotent, under a second when all is in place): MediaPipe's
# landmarker, the prepared segmentation models, ICT-FaceKit, the face model file.
setup: $(STAMP)
	$(PY) -m backend setup

demo: setup
	$(PY) -m backend demo
	$(MAKE) --no-print-directory blender-demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m backend bench --quick

# Rebuilds weights/mediapipe_to_ict.npz from the London photos (see weights/MANIFEST.md).
correspondence: setup
	$(PY) scripts/build_landmark_correspondence.py

# Rebuilds weights/albedo_model.npz from the London photos (see weights/MANIFEST.md; about 10 minutes).
albedo-model: setup
	$(PY) scripts/build_albedo_model.py

# Rebuilds weights/generator.npz: training data from the London photos, stage 1 (face crops), stage 2 (UV
# pairs), export (see weights/MANIFEST.md; about 2.5 hours on 2 cores, resumable: run it again).
generator: setup
	$(PY) scripts/build_generator_data.py --views 8
	$(PY) scripts/train_generator.py --stage 1 --minutes 30 --steps 2000
	$(PY) scripts/train_generator.py --stage 2 --minutes 95 --steps 6000
	$(PY) scripts/train_generator.py --export

clean:
	rm -rf out dist build .pytest_cache

-include mk/blender.mk
