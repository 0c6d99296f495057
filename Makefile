# SegOne: the commands a user runs. `make test` is what CI runs (.ci/run).
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup setup-system test test-fast demo benchmark clean-env

DEMO_EPOCHS ?= 40

setup:
	bash scripts/setup_env.sh

# system programs some tests use (Orthanc with DICOMweb, dicom3tools), where apt-get is available
setup-system:
	bash scripts/setup_system.sh

test: setup setup-system
	$(PY) -m pytest -q tests

# the unit tests (no end-to-end runs marked slow): a few minutes
test-fast: setup setup-system
	$(PY) -m pytest -q -m "not slow" tests

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

benchmark: setup
	$(PY) scripts/benchmarks/benchmark_network.py

clean-env:
	rm -rf .venv
