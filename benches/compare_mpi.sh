#!/usr/bin/env bash
# Data parallelism across processes (issue #37) on this machine: the default model's `finetune`
# (SmolLM2-135M, 4 rows x 256 tokens, LoRA dropout 0.05 as by default: each rank draws the
# masks one process draws on its rows), once as one process with 2 kernel threads, once as `mpirun -np 2` with 1 thread per rank (the same 2
# cores), one after the other; prints per-step time, tokens/s, the time each rank spent in the
# collective sums (waiting for the slower rank included), the bytes summed per step, and the
# largest loss difference. On a 2-core machine two ranks share the cores, so this shows the
# cost of the sums, not a scaling.
#
#   benches/compare_mpi.sh [STEPS] [COMPUTE_DTYPE]    # defaults: 5 f32
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-qlora/target}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
steps="${1:-5}"
dtype="${2:-f32}"
cargo build -q --release --features mpi --example finetune
bin="$CARGO_TARGET_DIR/release/examples/finetune"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
common=(--steps "$steps" --compute-dtype "$dtype" --no-samples --eval-every 1000)
echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; steps $steps, compute $dtype"
RAYON_NUM_THREADS=2 "$bin" "${common[@]}" --out "$out/np1" > "$out/np1.log"
RAYON_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$bin" "${common[@]}" --out "$out/np2" \
  > "$out/np2.log"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    return [r for r in rows if "loss" in r]
one, two = load("np1"), load("np2")
# The first step pays for first-touch allocations: the mean is over the others.
def row(name, rs):
    rest = rs[1:] or rs
    sec = sum(r["seconds"] for r in rest) / len(rest)
    comm = sum(r.get("comm_seconds", 0.0) for r in rest) / len(rest)
    tps = sum(r["tokens"] for r in rest) / sum(r["seconds"] for r in rest)
    mb = max(r.get("transfer_bytes", 0) for r in rs) / 1e6
    print(f"| {name} | {sec:.2f} | {tps:.0f} | {comm:.3f} ({comm / sec * 100:.1f} %) | {mb:.1f} |")
print("| run | s/step | tokens/s | s/step in sums | MB summed/step |")
print("|---|---:|---:|---:|---:|")
row("1 process, 2 threads", one)
row("mpirun -np 2, 1 thread each", two)
d = max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two))
print(f"largest |loss difference| over {len(one)} steps: {d:.2e}")
PY
