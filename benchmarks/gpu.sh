#!/usr/bin/env bash
# Every benchmark table in one command. On a CUDA machine: full sizes on the GPU, in under 8 minutes on one recent
# GPU; elsewhere: the same tables at reduced sizes on the CPU. Tables go to benchmarks/results/<device>/ (the CPU
# tables of record in benchmarks/results/ are left alone).
#
#   bash benchmarks/gpu.sh            # uses `python` (set PYTHON=... to choose another interpreter)
#   REPEATS=5 bash benchmarks/gpu.sh  # more round-robin repeats per table (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REPEATS=${REPEATS:-3}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda; SIZE=()
else
    DEVICE=cpu; SIZE=(--quick)
    echo "no CUDA device: running every table at reduced sizes on the CPU" >&2
fi
OUT=benchmarks/results/$DEVICE
mkdir -p "$OUT"
START=$SECONDS
run() {  # run NAME CMD...: one table, timed, stopping at the first failure with its name
    local name=$1; shift
    echo "== $name: $*" >&2
    local t0=$SECONDS
    "$@" || { echo "benchmark '$name' failed (command: $*)" >&2; exit 1; }
    echo "== $name: $((SECONDS - t0)) s" >&2
}
run "PIE rounds" "$PY" benchmarks/bench_progression.py --device "$DEVICE" --repeats "$REPEATS" "${SIZE[@]}" \
    --out "$OUT/progression.md"
run "ssProp FLOPs and step time" "$PY" benchmarks/bench_sparse_backprop.py --device "$DEVICE" --skip-quality \
    "${SIZE[@]}" --out "$OUT/sparse_backprop.md" --figures "$OUT"
run "autoencoder memory vs volume size" "$PY" benchmarks/bench_memory.py --device "$DEVICE" --repeats "$REPEATS" \
    "${SIZE[@]}" --out "$OUT/memory.md"
run "latent cache" "$PY" benchmarks/bench_latent_cache.py --device "$DEVICE" --repeats "$REPEATS" "${SIZE[@]}" \
    --out "$OUT/latent_cache.md"
echo "all tables in $OUT/ ($((SECONDS - START)) s)" >&2
