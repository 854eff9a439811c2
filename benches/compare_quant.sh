#!/usr/bin/env bash
# Runs bitsandbytes' quantize/dequantize/matmul_4bit benchmark (benches/peer/bench_quant.py)
# and ours back to back on the same machine with 2 threads, and prints our tables with the ratios.
#
#   benches/compare_quant.sh            # uses the peer venv at $HOME/.cache/peer-bench/venv
#   benches/compare_quant.sh --install  # first creates that venv with the peer's pinned packages
set -euo pipefail
cd "$(dirname "$0")/.."
# The same target folder as the tests (.ci/run), so a bench reuses their build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-qlora/target}"
peer_dir="${PEER_BENCH_DIR:-benches/peer}"  # a copy of the shared peer, kept in the repo
venv="${PEER_VENV:-$HOME/.cache/peer-bench/venv}"
if [ "${1:-}" = "--install" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$peer_dir/requirements.txt" psutil
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "== peer: bitsandbytes (bench_quant.py), 2 threads"
(cd "$peer_dir" && BENCH_THREADS=2 "$venv/bin/python" bench_quant.py "$out/peer.json")
echo
echo "== ours"
RAYON_NUM_THREADS=2 cargo bench -q --bench nf4_quant -- --peer "$out/peer.json"
echo
RAYON_NUM_THREADS=2 cargo bench -q --bench nf4_linear -- --peer "$out/peer.json"
