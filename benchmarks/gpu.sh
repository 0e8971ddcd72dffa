#!/usr/bin/env bash
# Every benchmark table in one command. On a CUDA machine: full sizes on the GPU, in under 8 minutes on one recent
# GPU; elsewhere: the same tables at reduced sizes on the CPU. Tables go to benchmarks/results/<device>/ (the CPU
# tables of record in benchmarks/results/ are left alone).
#
#   bash benchmarks/gpu.sh            # uses `python` (set PYTHON=... to choose another interpreter)
#   REPEATS=5 bash benchmarks/gpu.sh  # more round-robin repeats per table (default 3)
#   RESULTS=/some/dir bash benchmarks/gpu.sh  # write the tables there instead
#
# A table that fails is reported and the others still run (one GPU session is often all there is); the exit status
# is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REPEATS=${REPEATS:-3}
# the denoiser and PIE-round tables skip torch.compile here (minutes of compiling; `python
# benchmarks/bench_denoiser.py --device cuda` and `python benchmarks/bench_progression.py --device cuda` take it); on
# the CPU the denoiser table times the brain network only
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda; SIZE=(); DENOISER=(--no_compile)
else
    DEVICE=cpu; SIZE=(--quick); DENOISER=(--no_compile --cases "brain bundle")
    echo "no CUDA device: running every table at reduced sizes on the CPU" >&2
fi
OUT=${RESULTS:-benchmarks/results/$DEVICE}
mkdir -p "$OUT"
START=$SECONDS
FAILED=()
run() {  # run NAME CMD...: one table, timed; a failure is recorded with its name and the next table runs
    local name=$1; shift
    echo "== $name: $*" >&2
    local t0=$SECONDS
    if "$@"; then
        echo "== $name: $((SECONDS - t0)) s" >&2
    else
        echo "== benchmark '$name' failed after $((SECONDS - t0)) s (command: $*)" >&2
        FAILED+=("$name")
    fi
}
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'== {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')" >&2
fi
run "PIE rounds" "$PY" benchmarks/bench_progression.py --device "$DEVICE" --repeats "$REPEATS" "${SIZE[@]}" \
    --no_compile --out "$OUT/progression.md"
run "denoiser call" "$PY" benchmarks/bench_denoiser.py --device "$DEVICE" --repeats "$REPEATS" "${DENOISER[@]}" \
    --out "$OUT/denoiser.md"
run "autoencoder memory vs volume size" "$PY" benchmarks/bench_memory.py --device "$DEVICE" --repeats "$REPEATS" \
    "${SIZE[@]}" --out "$OUT/memory.md"
run "ssProp FLOPs and step time" "$PY" benchmarks/bench_sparse_backprop.py --device "$DEVICE" --skip-quality \
    "${SIZE[@]}" --out "$OUT/sparse_backprop.md" --figures "$OUT"
run "latent cache" "$PY" benchmarks/bench_latent_cache.py --device "$DEVICE" --repeats "$REPEATS" "${SIZE[@]}" \
    --out "$OUT/latent_cache.md"
echo "all tables in $OUT/ ($((SECONDS - START)) s)" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "benchmarks that failed: ${FAILED[*]} (their commands and errors are above)" >&2
    exit 1
fi
