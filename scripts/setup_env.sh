#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv from requirements.lock.
# Quick when nothing changed: a stamp holds the hash of the inputs that decide the environment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${SEGONE_VENV:-$root/.venv}
python_bin=${PYTHON:-python3.11}
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
uv_version=0.13.8
sam2_version=1.1.0

inputs_hash=$(cat requirements.lock pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
stamp="$venv/.segone-env"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi

echo "[setup] creating the environment in $venv (python: $("$python_bin" --version))"
[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
# uv installs the locked set in seconds; it is bootstrapped with pip and then kept by the lock itself.
[ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"
uv="$venv/bin/uv"
export VIRTUAL_ENV="$venv"
# uv does not read pip's configuration, so the PyPI builds of torch/torchvision (which load together) are taken.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) Python never caches what it
# compiles, and every process (each bundle command, each test's subprocess) would compile torch, MONAI and the rest
# again: about 25 s before the first line of work instead of 8.
"$uv" pip sync --compile-bytecode --python "$venv/bin/python" requirements.lock
# sam2 is an sdist whose build must see the installed torch (with isolation it would pull the newest torch);
# SAM2_BUILD_CUDA=0 skips its optional CUDA extension, which CPU inference does not need.
SAM2_BUILD_CUDA=0 "$uv" pip install --compile-bytecode --python "$venv/bin/python" --no-build-isolation --no-deps \
    "sam2==$sam2_version"
"$uv" pip install --compile-bytecode --python "$venv/bin/python" --no-build-isolation --no-deps -e .
# the editable package's own sources are outside site-packages; a changed file is compiled again, as without a cache
"$venv/bin/python" -m compileall -q bundle >/dev/null
# The monailabel wheel ships its `monailabel` launcher (a one-line `python -m monailabel.main`) in a .data folder
# named after a different version string, which uv does not install; write the same launcher into the venv.
if [ ! -x "$venv/bin/monailabel" ]; then
    printf '#!/bin/sh\nexec "%s" -m monailabel.main "$@"\n' "$venv/bin/python" > "$venv/bin/monailabel"
    chmod +x "$venv/bin/monailabel"
fi
"$venv/bin/python" - <<'PY'
import importlib
for name in ("torch", "torchvision", "monai", "open_clip", "sam2", "highdicom", "monailabel", "onnxruntime", "bundle"):
    importlib.import_module(name)
import torch, torchvision.ops
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails when torch and torchvision builds disagree
print("[setup] imports ok: torch", torch.__version__)
PY
echo "$inputs_hash" > "$stamp"
