# SegOne: the commands a user runs. `make test` is what CI runs (.ci/run).
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup setup-system setup-web test test-fast demo benchmark web serve-web clean-env

DEMO_EPOCHS ?= 40

setup:
	bash scripts/setup_env.sh

# system programs some tests use (Orthanc with DICOMweb, dicom3tools), where apt-get is available
setup-system:
	bash scripts/setup_system.sh

# the browser page's npm packages (bundle/web/package-lock.json, `npm ci`), where npm is available; a no-op while
# the lock is unchanged. Without npm the page's tests skip.
setup-web:
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "[setup] npm not found: the browser page (bundle/web) cannot be built; its tests skip"; \
	elif [ "$$(sha256sum bundle/web/package-lock.json | cut -d' ' -f1)" != "$$(cat bundle/web/node_modules/.segone-lock 2>/dev/null)" ]; then \
		echo "[setup] npm ci in bundle/web" && cd bundle/web && npm ci --ignore-scripts --no-audit --no-fund && \
		sha256sum package-lock.json | cut -d' ' -f1 > node_modules/.segone-lock; \
	fi

# The test files run in TEST_WORKERS processes (pytest-xdist), each file whole in one of them so that its module
# fixtures (a trained model, an export) are built once; TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup setup-system setup-web
	$(PYTEST) tests

# the unit tests (no end-to-end runs marked slow): a few minutes
test-fast: setup setup-system setup-web
	$(PYTEST) -m "not slow" tests

# the main job on the embedded demo data: generate it, train briefly, segment it, score the held-out cases
demo: setup
	$(PY) scripts/make_demo_data.py --output_dir data/demo
	$(PY) -m monai.bundle run training --config_file configs/train.json --output_dir runs/demo \
		--max_epochs $(DEMO_EPOCHS) --batch_size 2 --val_interval 5 --resume False
	$(PY) -m monai.bundle run inference --config_file configs/inference.json --dataset_dir data/demo \
		--ckpt_path runs/demo/model.pt --output_dir runs/demo/inference
	$(PY) -m monai.bundle run evaluating --config_file configs/evaluate.json --eval_split test \
		--ckpt_path runs/demo/model.pt --output_dir runs/demo/evaluation
	@echo ""
	@echo "demo outputs in runs/demo/: model.pt (weights) and model.prompts.pt (prompt table), curves.png and overlays.png (training report),"
	@echo "events/ (TensorBoard), inference/*_seg.nii.gz (label maps, labels in inference/labels.json),"
	@echo "evaluation/metrics.json and metrics.csv (held-out demo cases)."
	@echo "This is a brief run ($(DEMO_EPOCHS) epochs, about a minute of training): expect a rough segmentation (mean Dice"
	@echo "about 0.5 on the held-out phantoms). The trained hippocampus model and its results: docs/README.md."

# the browser page (docs/browser.md): the static page, onnxruntime-web's files and an edge export in $(WEB_DIST);
# `make serve-web` then serves it at http://127.0.0.1:$(WEB_PORT)/. WEB_MODEL is the export folder: by default the
# shipped one (models/edge: its .onnx graphs and model.json); another comes from scripts/export_edge.py.
WEB_DIST ?= bundle/web/dist
WEB_PORT ?= 8000
WEB_MODEL ?= models/edge

web: setup setup-web
	node bundle/web/build.mjs $(WEB_DIST)
	mkdir -p $(WEB_DIST)/model
	cp $(WEB_MODEL)/*.onnx $(WEB_MODEL)/model.json $(WEB_DIST)/model/
	@echo "built $(WEB_DIST); serve it with: make serve-web (http://127.0.0.1:$(WEB_PORT)/)"

serve-web:
	$(PY) bundle/web/serve.py --directory $(WEB_DIST) --port $(WEB_PORT)

benchmark: setup
	$(PY) scripts/benchmarks/benchmark_network.py

clean-env:
	rm -rf .venv
