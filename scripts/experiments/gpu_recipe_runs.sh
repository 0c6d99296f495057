#!/bin/bash
# SegOne recipe variants and the same-recipe baselines (MONAI UNet, DynUNet as nnU-Net's 3d_fullres plan), trained
# side by side on one GPU machine in one call, for as many epochs as fit in TOTAL seconds: a 3-epoch calibration
# with every run sharing the machine measures the epoch time, then every SegOne variant trains for the same number
# of epochs (the schedule annealed over them) and the baselines for as many (train_baseline.py --max_epochs).
# SegOne variants are scored on the test split with configs/evaluate.json; the baselines score themselves.
#
# Run from the repository root on the GPU machine (the model card's "Runs on a GPU" section came from this script):
#   OUT=/path/for/results DATA=/path/to/Task04_Hippocampus TOTAL=560 bash scripts/experiments/gpu_recipe_runs.sh
# Optional: WHEELS=dir (pip-installs the wheels there first, into /tmp/site, for a machine without the bundle's
# packages), FIXED_EPOCHS=N (no calibration), RUNS_SEGONE="s0 stem1 ..." (names below), RUNS_BASELINE="unet",
# NUM_WORKERS (data loader workers per run, default 2), WORK_DIR (the runs: a new or empty folder, default a new
# /tmp/segone_runs.*),
# PY (the python, default python3), SMOKE=1 (2 epochs, no GPU checks: a dry run on a CPU).
# Results under $OUT: one tar per run (model, logs, metrics), logs.tgz (refreshed every 30 s), summary.txt.
set -u
T0=$(date +%s)
TOTAL=${TOTAL:-560}
PY=${PY:-python3}
D=${DATA:?DATA: the MSD hippocampus folder}
: "${OUT:?OUT: the results folder}"
# a new folder: the script never deletes anything it did not make
R=${WORK_DIR:-$(mktemp -d /tmp/segone_runs.XXXXXX)}
if [ -e "$R" ] && [ -n "$(ls -A "$R")" ]; then echo "WORK_DIR $R is not empty" >&2; exit 2; fi
mkdir -p $R $OUT
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $OUT/summary.txt; }
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
if [ -z "${SMOKE:-}" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $OUT/summary.txt
fi
# the baseline script imports the bundle package from the checkout
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
$PY -c "import torch, monai, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__, 'numpy', numpy.__version__)" | tee -a $OUT/summary.txt
( while true; do tar czf $OUT/logs.tgz.tmp -C $R $(cd $R && ls *.log 2>/dev/null) 2>/dev/null && mv $OUT/logs.tgz.tmp $OUT/logs.tgz; sleep 30; done ) &
LOGGER=$!

SEGONE=(${RUNS_SEGONE:-s0 s1 ds deep})
declare -A TRAIN=(
  [s0]=""
  [s1]="--seed 1"
  [ds]="--deep_supervision 2 --diffusion#deep_supervision_weight 1.0"
  [deep]="--encoder_blocks [1,1,3,3] --decoder_blocks [1,1,2]"
  [wide]="--features [48,96,192,384]"
  [stem1]="--stem_scale 1 --refine_channels 0"
)
declare -A EVAL=([s0]="" [s1]="" [ds]="--deep_supervision 2" [deep]="--encoder_blocks [1,1,3,3] --decoder_blocks [1,1,2]")
EVAL[wide]=${TRAIN[wide]}
EVAL[stem1]=${TRAIN[stem1]}
NW=${NUM_WORKERS:-2}
BASELINES=(${RUNS_BASELINE-unet dynunet})
for n in ${SEGONE[@]}; do
  [ -n "${TRAIN[$n]+set}" ] || { echo "unknown SegOne run $n (known: ${!TRAIN[*]})" >&2; kill $LOGGER; exit 2; }
done
for a in ${BASELINES[@]}; do
  case $a in unet|basicunet|dynunet) ;; *) echo "unknown baseline $a (unet, basicunet, dynunet)" >&2; kill $LOGGER; exit 2;; esac
done
# waits for the runs started, never for the log refresher (a bare `wait` would wait for it forever)
wait_runs() { [ ${#PIDS[@]} -eq 0 ] || wait "${PIDS[@]}"; }

calc() { awk "BEGIN { print $1 }"; }
segone() {  # NAME EPOCHS VAL_INTERVAL OUTPUT_DIR (TMO: a timeout prefix)
  ${TMO:-} $PY -m monai.bundle run training --config_file configs/train.json --dataset_dir $D --output_dir $4 \
    --max_epochs $2 --val_interval $3 --num_workers $NW --all_prompts True --diffusion#competition_weight 1.0 \
    --augment_spatial True --flip_axes "[0]" ${TRAIN[$1]}
}
baseline() {  # ARCH EPOCHS VAL_EVERY OUTPUT_DIR
  ${TMO:-} $PY scripts/experiments/train_baseline.py --dataset_dir $D --arch $1 --max_epochs $2 --val_every $3 \
    --output_dir $4 --num_workers $NW --set augment_spatial=True --set "flip_axes=[0]"
}
seconds() { awk -F: '{print $1 * 3600 + $2 * 60 + $3}'; }

if [ -n "${FIXED_EPOCHS:-}" ]; then
  EPOCHS=$FIXED_EPOCHS
else
# calibration: 3 epochs of every run at once (validation after the third; every epoch for the baselines)
log "calibration"
PIDS=()
for n in ${SEGONE[@]}; do
  ( s=$(date +%s); segone $n 3 3 $R/cal_$n > $R/cal_$n.log 2>&1; echo $? $(($(date +%s) - s)) > $R/cal_$n.done ) &
  PIDS+=($!)
done
for a in ${BASELINES[@]}; do
  ( s=$(date +%s); baseline $a 3 1 $R/cal_$a > $R/cal_$a.log 2>&1; echo $? $(($(date +%s) - s)) > $R/cal_$a.done ) &
  PIDS+=($!)
done
wait_runs
FIT=100000
for n in ${SEGONE[@]}; do
  read rc wall < $R/cal_$n.done
  ep=$(grep "DiffusionTrainer - INFO - Epoch\[2\] Complete" $R/cal_$n.log | sed 's/.*Time taken: //' | seconds)
  val=$(grep "SupervisedEvaluator - INFO - Epoch\[3\] Complete" $R/cal_$n.log | sed 's/.*Time taken: //' | seconds)
  log "cal $n: rc $rc wall $wall s, epoch ${ep:-?} s, validation ${val:-?} s"
  if [ "$rc" != 0 ] || [ -z "$ep" ]; then tail -30 $R/cal_$n.log | tee -a $OUT/summary.txt; kill $LOGGER; exit 1; fi
  startup=$(calc "$wall - 3 * $ep - $val")
  left=$((T0 + TOTAL - 75 - $(date +%s)))
  fit=$(calc "int(($left - $startup) / ($ep * 1.08 + $val / 5))")
  [ $fit -lt $FIT ] && FIT=$fit
done
declare -A BFIT
for a in ${BASELINES[@]}; do
  read rc wall < $R/cal_$a.done
  t1=$(grep "^epoch 1 " $R/cal_$a.log | sed 's/.*(\([0-9]*\) s)/\1/'); t3=$(grep "^epoch 3 " $R/cal_$a.log | sed 's/.*(\([0-9]*\) s)/\1/')
  log "cal $a: rc $rc wall $wall s, epochs 1 and 3 done at ${t1:-?} and ${t3:-?} s"
  if [ "$rc" != 0 ] || [ -z "$t3" ]; then tail -20 $R/cal_$a.log | tee -a $OUT/summary.txt; BFIT[$a]=0; continue; fi
  per=$(calc "($t3 - $t1) / 2 + 0.5")
  left=$((T0 + TOTAL - 75 - $(date +%s)))
  BFIT[$a]=$(calc "int(($left - ($wall - $t3) - $t1) / $per)")
done
EPOCHS=$((FIT > 400 ? 400 : FIT))
[ -n "${SMOKE:-}" ] && EPOCHS=2
if [ $EPOCHS -lt 1 ]; then log "no whole epoch fits in TOTAL=$TOTAL s: give more time"; kill $LOGGER; exit 1; fi
log "SegOne epochs: $EPOCHS (fit $FIT)"
fi

# the runs: every SegOne variant for the same number of epochs; the baselines for as many (fewer if they do not fit)
DEADLINE=$((T0 + TOTAL - 60))
PIDS=()
for n in ${SEGONE[@]}; do
  TMO="timeout $((DEADLINE - $(date +%s)))" segone $n $EPOCHS 5 $R/$n > $R/$n.log 2>&1 &
  PIDS+=($!)
done
for a in ${BASELINES[@]}; do
  be=$(( ${BFIT[$a]:-$EPOCHS} < EPOCHS ? ${BFIT[$a]:-$EPOCHS} : EPOCHS))
  [ $be -lt 1 ] && continue
  log "$a epochs: $be"
  TMO="timeout $((DEADLINE - $(date +%s)))" baseline $a $be 5 $R/$a > $R/$a.log 2>&1 &
  PIDS+=($!)
done
wait_runs
log "training done"
PIDS=()
for n in ${SEGONE[@]}; do
  log "$n: $(grep -o 'Key metric: val_mean_dice best value: .*' $R/$n.log | tail -1)"
  [ -f $R/$n/model.pt ] || continue
  $PY -m monai.bundle run evaluating --config_file configs/evaluate.json --dataset_dir $D --eval_split test \
    --ckpt_path $R/$n/model.pt --output_dir $R/$n/eval_test ${EVAL[$n]} > $R/${n}_eval.log 2>&1 &
  PIDS+=($!)
done
wait_runs
kill $LOGGER
for n in ${SEGONE[@]}; do
  [ -f $R/$n/eval_test/metrics.json ] && log "$n test: $($PY -c "import json;m=json.load(open('$R/$n/eval_test/metrics.json'))['mean'];print({k: round(v, 4) for k, v in m.items() if isinstance(v, float)})")"
  tar cf $OUT/$n.tar -C $R $(cd $R && ls $n.log ${n}_eval.log cal_$n.log $n/model.pt $n/model.prompts.pt $n/history.json $n/eval_test/metrics.json 2>/dev/null)
done
for a in ${BASELINES[@]}; do
  [ -f $R/$a/metrics.json ] && log "$a: $($PY -c "import json;m=json.load(open('$R/$a/metrics.json'));r=m['run'];print('epochs', r['epochs'], 'best val', round(r['best_val_dice'], 4), 'at', r['best_epoch'], 'test', round(m['mean']['dice'], 4), 'train s', round(r['train_seconds']))")"
  tar cf $OUT/$a.tar -C $R $(cd $R && ls $a.log cal_$a.log $a/metrics.json 2>/dev/null)
done
tar czf $OUT/logs.tgz -C $R $(cd $R && ls *.log)
log "end"
