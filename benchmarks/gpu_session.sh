#!/usr/bin/env bash
# One prepared run for a GPU session (an H100 lent through the `device` tool). Resumable: a
# second call on the same warm machine continues where the first stopped (its state lives in
# /tmp/pcnas there). Two builds share the one GPU, each in its own worker processes:
#   set:   the reference set (proxies/reference/fashion-mnist), every run it lacks
#   pilot: the pilot architectures (proxies/reference/pilot) under the budgets the CPU
#          cannot reach: 10 epochs at two learning rates, 30 epochs, 64 px, a third lr
# First, once per machine, a throughput probe (benchmarks/gpu_throughput.py: steps/s with 1
# and 12 processes, then 12 under NVIDIA MPS, kept on only where it measured >= 1.3x);
# plus, once, pytest -m gpu (the CUDA tests that skip everywhere else). Every row is copied
# to $OUT as it lands (set-runs.jsonl, pilot-runs.jsonl), so a cut run still brings back
# what it did; copy them into the two folders here afterwards.
# Needs, carried: .whl (optuna, fvcore, timm and their pure-Python needs, for Python 3.12)
# and .gpu_data (the Fashion-MNIST files): `bash benchmarks/gpu_prepare.sh` makes both here.
# Test here first: DRY=1 PY=.venv/bin/python bash benchmarks/gpu_session.sh (tiny, on CPU).
#   usage: BUDGET_S=560 bash benchmarks/gpu_session.sh  (device call: timeout_s=600,
#          carry [".whl", ".gpu_data"]); env SET_WORKERS=8 PILOT_WORKERS=4
# A set run took about 3 min with 12 processes on the H100 (2026-11-26): a call with less
# than 400 s left trains the set's cheapest runs first, so that it finishes some.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
DRY=${DRY:-0}
BUDGET_S=${BUDGET_S:-560}
SET_WORKERS=${SET_WORKERS:-8}
PILOT_WORKERS=${PILOT_WORKERS:-4}
PY=${PY:-python3}
W=${W:-/tmp/pcnas}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }
left() { echo $((BUDGET_S - ($(date +%s) - start))); }

if [ -d .whl ] && ! $PY -c "import optuna, fvcore, timm" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if [ -d .gpu_data ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/* /usr/share/datasets/fashion-mnist/
fi

mkdir -p "$W"
for name in set pilot; do  # the committed folders, rows included, copied once
  src=proxies/reference/$([ "$name" = set ] && echo fashion-mnist || echo pilot)
  [ -d "$W/$name" ] || cp -r "$src" "$W/$name"
done
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SET_WORKERS=1; PILOT_WORKERS=1
  rm -rf "$W/set" "$W/pilot"  # tiny stand-ins for both builds
  SET_ARGS=(--out "$W/set" --pilot --protocol epochs=1,batch_size=512 --seeds 0 --only smallest)
  PILOT_ARGS=(--out "$W/pilot" --pilot --protocol epochs=1,batch_size=512,lr=0.001 --seeds 0
              --only smallest)
else
  DEVICE=cuda
  SET_ARGS=(--out "$W/set" --order "$([ "$BUDGET_S" -lt 400 ] && echo cheapest || echo longest)")
  PILOT_ARGS=(--out "$W/pilot" --seeds 0,1 --protocol lr=0.0005 --protocol lr=0.002
              --protocol epochs=30,lr=0.0005 --protocol lr=0.0005,resolution=64
              --protocol lr=0.001)
fi
host=$(hostname)
copy_rows() {
  cat "$W/set/runs-$host-$DEVICE.jsonl" > "$OUT/set-runs.jsonl" 2>/dev/null
  cat "$W/pilot/runs-$host-$DEVICE.jsonl" > "$OUT/pilot-runs.jsonl" 2>/dev/null
}
log "machine: $host; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no GPU); $($PY -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "timm", timm.__version__)'); ${BUDGET_S}s budget"

MPS_DIR=/tmp/pcnas-mps
if [ ! -f "$W/probe.done" ]; then
  log "throughput probe (steps/s of the reference protocol, 1 and 12 processes)"
  procs=$([ "$DRY" = 1 ] && echo 1,2 || echo 1,12); secs=$([ "$DRY" = 1 ] && echo 3 || echo 12)
  timeout 150 $PY benchmarks/gpu_throughput.py --device "$DEVICE" --procs "$procs" \
    --seconds "$secs" --json "$OUT/throughput.jsonl" >> "$OUT/throughput.txt" 2>&1
  if [ "$DRY" != 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
    mkdir -p "$MPS_DIR/pipe" "$MPS_DIR/log"
    export CUDA_MPS_PIPE_DIRECTORY=$MPS_DIR/pipe CUDA_MPS_LOG_DIRECTORY=$MPS_DIR/log
    nvidia-cuda-mps-control -d && timeout 120 $PY benchmarks/gpu_throughput.py --device cuda \
      --procs 12 --seconds 12 --label mps --json "$OUT/throughput.jsonl" >> "$OUT/throughput.txt" 2>&1
    if $PY - "$OUT/throughput.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
plain = max((r["steps_per_s"] for r in rows if r["procs"] == 12 and r["label"] != "mps"), default=0)
mps = max((r["steps_per_s"] for r in rows if r["label"] == "mps"), default=0)
sys.exit(0 if plain and mps >= 1.3 * plain else 1)
PY
    then touch "$W/mps.on"; log "   MPS kept on: $(tail -1 "$OUT/throughput.txt")"
    else echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
         log "   MPS off (not >= 1.3x faster, or it failed)"
    fi
  fi
  touch "$W/probe.done"
  log "   $(tr '\n' ' ' < "$OUT/throughput.txt" | cut -c1-600)"
elif [ -f "$W/mps.on" ]; then
  export CUDA_MPS_PIPE_DIRECTORY=$MPS_DIR/pipe CUDA_MPS_LOG_DIRECTORY=$MPS_DIR/log
fi

if [ ! -f "$W/pytest.done" ]; then
  log "pytest -m 'gpu and not slow' (in the background, beside the builds, 400 s at most)"
  # Ray is not carried (its wheels are too large): its gpu test is also marked slow.
  (timeout 400 $PY -m pytest -q -m "gpu and not slow" -p no:cacheprovider tests/test_device.py \
     tests/test_search_cli.py > "$OUT/pytest_gpu.txt" 2>&1
   echo "exit $?" >> "$OUT/pytest_gpu.txt"; touch "$W/pytest.done") &
fi

T=$(($(left) - 15))
log "set on $DEVICE ($SET_WORKERS workers) and pilot ($PILOT_WORKERS workers), ${T}s"
timeout "$T" $PY -m proxies reference build --device "$DEVICE" --workers "$SET_WORKERS" \
  "${SET_ARGS[@]}" >> "$OUT/set.log" 2>&1 &
set_pid=$!
timeout "$T" $PY -m proxies reference build --device "$DEVICE" --workers "$PILOT_WORKERS" \
  "${PILOT_ARGS[@]}" >> "$OUT/pilot.log" 2>&1 &
pilot_pid=$!
while kill -0 "$set_pid" 2>/dev/null || kill -0 "$pilot_pid" 2>/dev/null; do
  copy_rows; sleep 10
done
wait "$set_pid"; s=$?; wait "$pilot_pid"; p=$?
copy_rows
log "set exit $s ($(grep -c '^\[' "$OUT/set.log") runs), pilot exit $p ($(grep -c '^\[' "$OUT/pilot.log") runs)"
wait  # pytest, if still running
log "done in $(($(date +%s) - start)) s"
