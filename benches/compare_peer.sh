#!/usr/bin/env bash
# Runs the peer's training-step benchmark (benches/peer/bench_train.py: PyTorch +
# transformers + PEFT + bitsandbytes) and ours (benches/train_step.rs) on the same machine in
# the same run, 2 threads each, mode by mode (peer, then ours), and prints our table with the
# ratios.
#
#   benches/compare_peer.sh            # uses the peer venv at $HOME/.cache/peer-bench/venv
#   benches/compare_peer.sh --install  # first creates that venv with the peer's pinned packages
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
peer_dir="$(cd "$peer_dir" && pwd)"
cargo bench -q --bench train_step --no-run
for mode in full lora qlora; do
  echo "== peer: $mode"
  (cd "$peer_dir" && BENCH_THREADS=2 "$venv/bin/python" bench_train.py "$mode" "$out/$mode.json" --steps 10 --warmup 3)
done
echo
echo "== ours (RAYON_NUM_THREADS=2)"
RAYON_NUM_THREADS=2 cargo bench -q --bench train_step -- --peer "$out"
