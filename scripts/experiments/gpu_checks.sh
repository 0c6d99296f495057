#!/bin/bash
# The bundle's CUDA paths, checked in one call on a GPU machine (CI and the tests run on CPUs, where
# multi_gpu_train.json runs on gloo and every config picks the CPU):
#   1. multi_gpu_train.json through torchrun with NCCL, one process per GPU, fine-tuning the shipped model
#      (--finetune True) for EPOCHS epochs with a validation after each; the model file is packed, to be loaded
#      on a CPU afterwards;
#   2. evaluate.json on the GPU: the shipped model on the test split (compare with a CPU run's metrics.json);
#   3. inference.json on the GPU: label maps for the first five images;
#   4. scripts/benchmarks/benchmark_inference.py --device cuda: SegOne against the MONAI UNet, 1, 4 and 16 windows
#      per call, on a hippocampus crop, an abdomen-sized and a brain-sized volume (the GPU to itself);
#   5. with TESTS="test paths", pytest on them (at most TESTS_TIMEOUT s, default 240): the workflow tests where
#      every config picks the GPU.
# A step that fails is logged with its exit status and the next one runs; the script's status is 1 if any failed.
#
# Run from the repository root:
#   OUT=/path/for/results DATA=/path/to/Task04_Hippocampus bash scripts/experiments/gpu_checks.sh
# Optional: WHEELS=dir (pip-installs the wheels there into /tmp/site first, for a machine without the bundle's
# packages), PY (default python3), EPOCHS (default 3), NUM_WORKERS (default 4), REPEATS (benchmark rounds,
# default 20), WORK_DIR (a new or empty folder; default a new /tmp/segone_gpu.*), SMOKE=1 (a dry run on a CPU: gloo,
# one epoch, the benchmark on the CPU at the hippocampus size with 2 rounds).
# Results under $OUT: summary.txt, ddp.tar (log, model files), eval.tar (log, metrics.json), infer.tar (log, the
# label maps' names and sizes), bench.txt, pytest.txt.
set -u
T0=$(date +%s)
PY=${PY:-python3}
D=${DATA:?DATA: the MSD hippocampus folder}
: "${OUT:?OUT: the results folder}"
R=${WORK_DIR:-$(mktemp -d /tmp/segone_gpu.XXXXXX)}
if [ -e "$R" ] && [ -n "$(ls -A "$R")" ]; then echo "WORK_DIR $R is not empty" >&2; exit 2; fi
mkdir -p "$R" "$OUT"
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
EPOCHS=${EPOCHS:-3}
NW=${NUM_WORKERS:-4}
REPEATS=${REPEATS:-20}
if [ -n "${SMOKE:-}" ]; then EPOCHS=1; REPEATS=2; fi
# a python that cannot import the basics stops the script here (a pipe into tee would hide its exit status)
versions=$($PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'monai', monai.__version__)") || { echo "$PY cannot import torch and monai" | tee -a "$OUT/summary.txt" >&2; exit 1; }
echo "$versions" | tee -a "$OUT/summary.txt"
if [ -z "${SMOKE:-}" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
  NPROC=$($PY -c "import torch; print(torch.cuda.device_count())")
  [ "$NPROC" -ge 1 ] || { log "no GPU: run with SMOKE=1 on a CPU"; exit 1; }
else
  NPROC=1
fi
FAILED=0
step() {  # NAME COMMAND...: runs it, logs its exit status and wall time
  local name=$1 s rc
  shift
  s=$(date +%s)
  "$@" > "$R/$name.log" 2>&1
  rc=$?
  log "$name: rc $rc, $(($(date +%s) - s)) s"
  [ $rc -eq 0 ] || { FAILED=1; tail -25 "$R/$name.log" | tee -a "$OUT/summary.txt"; }
}

# 1. multi-GPU training (NCCL where there is a GPU), fine-tuning the shipped model
step ddp $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m monai.bundle run training \
  --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir "$D" --output_dir "$R/ddp" \
  --finetune True --max_epochs "$EPOCHS" --val_interval 1 --warmup_epochs 0 --learning_rate 1e-4 \
  --num_workers "$NW" --all_prompts True --diffusion#competition_weight 1.0 --augment_spatial True --flip_axes "[0]"
log "ddp: backend $($PY -c "import torch; print('nccl' if torch.cuda.is_available() else 'gloo')"), $(grep -o 'Epoch\[[0-9]*\] Metrics -- val_mean_dice: [0-9.]*' "$R/ddp.log" | tr '\n' ' ')"
tar cf "$OUT/ddp.tar" -C "$R" $(cd "$R" && ls ddp.log ddp/model.pt ddp/model.prompts.pt ddp/history.json 2>/dev/null)

# 2. evaluation on the GPU
step eval $PY -m monai.bundle run evaluating --config_file configs/evaluate.json --dataset_dir "$D" --eval_split test \
  --output_dir "$R/eval"
[ -f "$R/eval/metrics.json" ] && log "eval test: $($PY -c "import json;m=json.load(open('$R/eval/metrics.json'))['mean'];print({k: round(v, 4) for k, v in m.items() if isinstance(v, float)})")"
tar cf "$OUT/eval.tar" -C "$R" $(cd "$R" && ls eval.log eval/metrics.json 2>/dev/null)

# 3. inference on the GPU, five images
mkdir -p "$R/infer_in"
for f in $(ls "$D"/imagesTr/*.nii.gz | head -5); do ln -s "$f" "$R/infer_in/"; done
step infer $PY -m monai.bundle run inference --config_file configs/inference.json --dataset_dir "$R/infer_in" \
  --output_dir "$R/infer"
(cd "$R" && find infer -name '*_seg.nii.gz' -printf '%p %s\n' | sort) > "$R/infer_files.txt"
log "infer: $(wc -l < "$R/infer_files.txt") label maps"
tar cf "$OUT/infer.tar" -C "$R" infer.log infer_files.txt

# 4. whole-volume inference time, SegOne against the UNet (nothing else on the GPU now)
if [ -n "${SMOKE:-}" ]; then
  BENCH=("--device cpu --threads 1 --shape 36 50 36 --num_classes 2 --sw_batch_size 1")
else
  BENCH=("--device cuda --threads 4 --shape 36 50 36 --num_classes 2 --sw_batch_size 1 4 16"
    "--device cuda --threads 4 --shape 256 256 34 --num_classes 4 --sw_batch_size 1 4 16"
    "--device cuda --threads 4 --shape 240 240 155 --num_classes 4 --sw_batch_size 1 4 16")
fi
for b in "${BENCH[@]}"; do
  echo "## benchmark_inference.py --steps 1 --repeats $REPEATS $b" >> "$OUT/bench.txt"
  step bench $PY scripts/benchmarks/benchmark_inference.py --steps 1 --repeats "$REPEATS" $b
  cat "$R/bench.log" >> "$OUT/bench.txt"
done
# 5. (TESTS="test paths") the test suite's own workflow tests, on a machine where every config picks the GPU
if [ -n "${TESTS:-}" ]; then
  step pytest timeout "${TESTS_TIMEOUT:-240}" $PY -m pytest -q -rs -p no:cacheprovider --timeout 180 $TESTS
  cp "$R/pytest.log" "$OUT/pytest.txt"
fi
log "end"
exit $FAILED
