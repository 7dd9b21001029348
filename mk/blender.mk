# Blender side (blender_manifest.toml, __init__.py, operators/, panels/): included by the Makefile.
# Uses Blender's own extension tool (shipped inside the bpy wheel) unless BLENDER names a Blender
# binary, e.g. `make extension BLENDER=/opt/blender/blender`.
BLENDER ?=
BLENDER_EXT_TOOL = $(firstword $(wildcard .venv/lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py))
EXT_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' blender_manifest.toml)
EXT_ZIP := dist/likeness-$(EXT_VERSION).zip
DEMO_OUT := out/demo

.PHONY: extension blender-demo blender-test blender-bench

extension: $(STAMP)
	@mkdir -p dist
ifeq ($(BLENDER),)
	$(PY) $(BLENDER_EXT_TOOL) validate .
	$(PY) $(BLENDER_EXT_TOOL) build --source-dir . --output-filepath $(EXT_ZIP)
else
	$(BLENDER) --factory-startup --command extension validate .
	$(BLENDER) --factory-startup --command extension build --source-dir . --output-filepath $(EXT_ZIP)
endif
	@echo "built $(EXT_ZIP)"

# Imports the demo bundle (from `python -m backend demo`), applies the studio preset, saves
# out/demo/demo.blend and renders out/demo/render.png with Cycles on the CPU.
blender-demo: $(STAMP)
	@ls $(DEMO_OUT)/*/result.json >/dev/null 2>&1 || $(PY) -m backend demo
	$(PY) scripts/render_bundle.py $(DEMO_OUT) --blend $(DEMO_OUT)/demo.blend --png $(DEMO_OUT)/render.png \
		--preset STUDIO --resolution 512 --samples 32 --denoise

blender-test: $(STAMP)
	$(PY) -m pytest -q tests/blender

blender-bench: $(STAMP)
	$(PY) scripts/bench_blender.py
