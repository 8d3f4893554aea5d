#!/usr/bin/env bash
# One prepared run for a GPU session (an H100 lent through the `device` tool; see
# benchmarks/README.md, "GPU session"). Phases in order of value, each under its own time
# limit, every result written as it finishes, so a cut run still brings back what it did:
#   1. pytest -m gpu (the CUDA tests that skip everywhere else)
#   2. the reference set (proxies/reference/fashion-mnist): every run it lacks, N worker
#      processes on the one GPU; rows -> $OUT/runs-gpu.jsonl
#   3. benchmarks/proxy_speed.py --device cuda -> $OUT/proxy_speed.json
#   4. (if time is left) a measured latency table of this GPU, built and validated
# Needs, carried: .whl (optuna, fvcore and their pure-Python needs, built for Python 3.12)
# and .gpu_data (the four Fashion-MNIST files): `bash benchmarks/gpu_prepare.sh` makes both
# here. Test it here first: DRY=1 PY=.venv/bin/python runs every phase on the CPU with tiny
# settings.
#   usage: bash benchmarks/gpu_session.sh   (env: SET_S=330 SPEED_S=150 TABLE_S=0 WORKERS=8)
# Phases 1-3 take about 90 + SET_S + SPEED_S seconds: call the device tool with
# timeout_s=600 and carry [".whl", ".gpu_data"]; a second call with SET_S=500 SPEED_S=0
# continues the set where the first stopped (the rows it brought back must be copied into
# proxies/reference/fashion-mnist/ first, or the second call retrains them).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
DRY=${DRY:-0}
SET_S=${SET_S:-330}
SPEED_S=${SPEED_S:-150}
TABLE_S=${TABLE_S:-0}
WORKERS=${WORKERS:-8}
PY=${PY:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }

if [ -d .whl ] && ! $PY -c "import optuna, fvcore" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if [ -d .gpu_data ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/* /usr/share/datasets/fashion-mnist/
fi
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SET_DIR=$(mktemp -d); WORKERS=2
  SET_ARGS=(--pilot --protocol epochs=1,batch_size=512 --seeds 0 --only smallest,tiny)
  SPEED_ARGS=(--level smoke --concurrency 1,2 --candidates 4 --warmup-s 5)
else
  DEVICE=cuda; SET_DIR=proxies/reference/fashion-mnist; SET_ARGS=()
  SPEED_ARGS=(--concurrency 1,4,8 --candidates 24)
fi
log "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no GPU); $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())')"

log "1. pytest -m gpu"
# Ray is not carried (its wheels are too large): its gpu test is also marked slow.
timeout 150 $PY -m pytest -q -m "gpu and not slow" -p no:cacheprovider tests/test_device.py \
  tests/test_search_cli.py > "$OUT/pytest_gpu.txt" 2>&1
log "   exit $? ($(tail -1 "$OUT/pytest_gpu.txt"))"

log "2. reference set $SET_DIR on $DEVICE, $WORKERS workers, ${SET_S}s"
before=$(cat "$SET_DIR"/runs*.jsonl 2>/dev/null | wc -l)
timeout "$SET_S" $PY -m proxies reference build --out "$SET_DIR" --device "$DEVICE" \
  --workers "$WORKERS" "${SET_ARGS[@]}" > "$OUT/set.log" 2>&1
log "   exit $? ($(grep -c '^\[' "$OUT/set.log") runs finished)"
cat "$SET_DIR"/runs*.jsonl 2>/dev/null | tail -n +"$((before + 1))" > "$OUT/runs-gpu.jsonl"

if [ "$SPEED_S" -gt 0 ]; then
  log "3. proxy speed on $DEVICE, ${SPEED_S}s"
  timeout "$SPEED_S" $PY benchmarks/proxy_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" \
    --json "$OUT/proxy_speed.json" > "$OUT/proxy_speed.txt" 2>&1
  log "   exit $?"
fi

if [ "$TABLE_S" -gt 0 ]; then
  log "4. latency table of this GPU, ${TABLE_S}s"
  timeout "$TABLE_S" $PY -m latency_tables build --target "$DEVICE" --sweeps 1 \
    --out "$OUT" > "$OUT/table.log" 2>&1
  log "   exit $?"
fi
log "done"
