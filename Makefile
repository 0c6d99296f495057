# SegOne: the commands a user runs. `make test` is what CI runs (.ci/run).
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup test benchmark clean-env

setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) scripts/benchmark_network.py

clean-env:
	rm -rf .venv
