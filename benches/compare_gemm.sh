#!/usr/bin/env bash
# The bf16 GEMM (crates/qlora-cpu-gemm, every tier this CPU has) against our f32 GEMM and
# PyTorch's f32 and bf16 matmul (benches/peer/bf16_gemm.py), same run, 2 threads each.
#   benches/compare_gemm.sh [--quick]   # the peer venv at $PEER_VENV or $HOME/.cache/peer-bench/venv
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-qlora/target}"
venv="${PEER_VENV:-$HOME/.cache/peer-bench/venv}"
lscpu | grep -E '^Model name' || true
echo "== ours (RAYON_NUM_THREADS=2)"
RAYON_NUM_THREADS=2 cargo bench -q -p qlora-cpu-gemm --bench bf16_gemm -- "$@"
echo "== peer: PyTorch matmul (BENCH_THREADS=2)"
BENCH_THREADS=2 "$venv/bin/python" benches/peer/bf16_gemm.py "$@"
