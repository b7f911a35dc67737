#!/usr/bin/env bash
# The GPU run, prepared (docs/gpu.md): in one call on the GPU machine, every GPU check of the
# project, each step's output in $OUT/run.log and its figures in $OUT/*.json, then a summary
# ($OUT/gpu_run.md, $OUT/gpu_run.json).
#
#   GPU machine (no network needed), from the repository root, with .whl/ (the wheels of
#   `bash benchmarks/gpu/wheelhouse.sh`, built where PyPI is reachable) and .data/fashion-mnist/
#   (Debian's /usr/share/datasets/fashion-mnist/*.gz) copied into the repository there:
#       bash benchmarks/gpu/run.sh [--only STEP,...]
#   Here, on the CPU, every step at toy size (tests/test_gpu_script.py runs this in CI):
#       bash benchmarks/gpu/run.sh --dry-run
#
# Steps (--only picks some, e.g. to rerun what a first call did not reach):
#   tests  the CUDA tests (tests/test_cuda.py: sync counts under torch.cuda.set_sync_debug_mode,
#          AMP steps) and the CPU-side sync and precision tests, on the GPU machine's Python
#   syncs  the host-sync audit on the device (python -m benchmarks.host_syncs --device cuda)
#   train  FashionScenes Libra R-CNN (the demo), Libra RetinaNet and AB+FSAF, float32 and AMP,
#          trained and evaluated by train_net.py, three at a time
#   bench  python -m benchmarks: Faster R-CNN vs Libra R-CNN and RetinaNet vs Libra RetinaNet at
#          COCO size (2 and 8 images per step) and on FashionScenes, float32 and AMP
# A failed step is recorded and the next one runs; the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/../.."

MODE=gpu
STEPS="tests,syncs,train,bench"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --only) STEPS="$2"; shift ;;
    *) echo "benchmarks/gpu/run.sh: error: unknown argument $1 (--dry-run, --only STEP,...)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d)}
LOG="$OUT/run.log"
: > "$LOG"
STATUS=0
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

if [ "$MODE" = gpu ]; then
  PY=python3
  # The wheels the GPU machine lacks (no registry there), and the Fashion-MNIST files.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "benchmarks/gpu/run.sh: error: installing .whl/*.whl failed (build .whl with benchmarks/gpu/wheelhouse.sh, see docs/gpu.md)" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD/projects/LibraRCNN:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  mkdir -p /usr/share/datasets/fashion-mnist && cp .data/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/ \
    || { echo "benchmarks/gpu/run.sh: error: .data/fashion-mnist/*.gz not found (see docs/gpu.md)" >&2; exit 2; }
  DEVICE=cuda; SIZE=256; NUM_TRAIN=1000; NUM_VAL=200; MAX_ITER=800; WORKERS=4; AMP_VALUES="False True"
  BENCH=(--devices cuda --only detectors --precision float32 amp --coco-batch 2 8 --random-weights
         --train-repeats 6 --coco-train-repeats 4 --infer-repeats 10 --coco-infer-repeats 8)
else
  PY=.venv/bin/python
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  DEVICE=cpu; SIZE=128; NUM_TRAIN=8; NUM_VAL=4; MAX_ITER=2; WORKERS=0; AMP_VALUES="False"  # AMPTrainer needs CUDA
  BENCH=(--devices cpu --only detectors --suites FashionScenes --families rcnn --precision float32 amp
         --fashion-batch 2 --train-warmup 0 --train-repeats 1 --infer-warmup 0 --infer-repeats 1 --random-weights)
fi
export DETECTRON2_DATASETS="$WORK/datasets"

step() {  # name command...: runs it, its output to the log, its status and seconds to steps.json
  local name=$1; shift
  case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
  echo "== $name: $*" | tee -a "$LOG"
  local start=$SECONDS
  "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  echo "{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - start))}" >> "$WORK/steps.jsonl"
  [ $rc -ne 0 ] && [ $STATUS -eq 0 ] && STATUS=$rc
  return 0
}

"$PY" -c "import torch, detectron2, libra_rcnn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee -a "$LOG"
"$PY" -m libra_rcnn.data --out "$DETECTRON2_DATASETS/fashion_scenes" --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" \
  --size "$SIZE" >> "$LOG" 2>&1 || { echo "benchmarks/gpu/run.sh: error: building FashionScenes failed" >&2; exit 2; }

if [ "$MODE" = gpu ]; then
  TESTS=(tests/test_cuda.py tests/test_host_syncs.py tests/test_precision.py)
else
  TESTS=(tests/test_cuda.py)  # skipped without CUDA; the others run in the suite already
fi
step tests "$PY" -m pytest -q -p no:cacheprovider -s "${TESTS[@]}"
step syncs "$PY" -m benchmarks.host_syncs --device "$DEVICE" --datasets "$DETECTRON2_DATASETS" --out "$OUT/host_syncs.json"

train_all() {  # the six runs, three at a time; each run's folder under $WORK/runs
  local pids=() config amp
  for config in libra_rcnn_R_18_FPN_GN libra_retinanet_R_18_FPN_GN ab_fsaf_R_18_FPN_GN; do
    for amp in $AMP_VALUES; do
      local name="$config"; [ "$amp" = True ] && name="${config}_amp"
      "$PY" train_net.py --config-file "configs/FashionScenes/$config.yaml" MODEL.DEVICE "$DEVICE" \
        SOLVER.AMP.ENABLED "$amp" SOLVER.MAX_ITER "$MAX_ITER" DATALOADER.NUM_WORKERS "$WORKERS" \
        INPUT.MIN_SIZE_TRAIN "($SIZE,)" INPUT.MAX_SIZE_TRAIN "$SIZE" INPUT.MIN_SIZE_TEST "$SIZE" \
        INPUT.MAX_SIZE_TEST "$SIZE" OUTPUT_DIR "$WORK/runs/$name" > "$WORK/train_$name.log" 2>&1 &
      pids+=($!)
      if [ ${#pids[@]} -ge 3 ]; then wait "${pids[0]}" || return 1; pids=("${pids[@]:1}"); fi
    done
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  cat "$WORK"/train_*.log
  return $rc
}
step train train_all
step bench "$PY" -m benchmarks "${BENCH[@]}" --out "$WORK/bench"
cp "$WORK"/bench/results.json "$OUT/benchmarks.json" 2>/dev/null
cp "$WORK"/bench/results.md "$OUT/benchmarks.md" 2>/dev/null
if ! "$PY" -m benchmarks.gpu.summary --mode "$MODE" --work "$WORK" --out "$OUT" >> "$LOG" 2>&1; then
  echo "benchmarks/gpu/run.sh: error: the summary failed (see $LOG)" >&2
  [ $STATUS -eq 0 ] && STATUS=1
fi
cat "$OUT/gpu_run.md" 2>/dev/null
exit $STATUS
