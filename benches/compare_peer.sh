#!/usr/bin/env bash
# Runs the peer's training-step benchmark (benches/peer/bench_train.py: PyTorch +
# transformers + PEFT + bitsandbytes) and ours (benches/train_step.rs) on the same machine in
# the same run, 2 threads each, peer then ours, and prints our tables with the ratios:
#   1. the default model's shape (SmolLM2-135M: 30 layers, hidden 576, vocab 49152, tied), QLoRA,
#      batch 4 x 256, against the peer in fp32 and with bf16 autocast (its best CPU setting),
#      ours in f32 and with --compute-dtype auto;
#   2. the 19.5 M peer model, full / LoRA / QLoRA, against the peer in fp32.
#
#   benches/compare_peer.sh            # uses the peer venv at $PEER_VENV or $HOME/.cache/peer-bench/venv
#   benches/compare_peer.sh --install  # first creates that venv with the peer's pinned packages
#   benches/compare_peer.sh --smollm2  # only the first table
set -euo pipefail
cd "$(dirname "$0")/.."
# The same target folder as the tests (.ci/run), so a bench reuses their build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-qlora/target}"
peer_dir="${PEER_BENCH_DIR:-benches/peer}"  # a copy of the shared peer, kept in the repo
venv="${PEER_VENV:-$HOME/.cache/peer-bench/venv}"
only_smollm2=false
for a in "$@"; do
  case "$a" in
    --install)
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q -r "$peer_dir/requirements.txt" psutil
      ;;
    --smollm2) only_smollm2=true ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
peer_dir="$(cd "$peer_dir" && pwd)"
peer() { (cd "$peer_dir" && BENCH_THREADS=2 "$venv/bin/python" bench_train.py "$@" --steps 10 --warmup 3); }
cargo bench -q --bench train_step --no-run

mkdir -p "$out/smollm2"
echo "== peer: qlora, SmolLM2-135M shape, fp32 then bf16 autocast"
peer qlora "$out/smollm2/qlora.json" --shape smollm2 --vocab 49152
peer qlora "$out/smollm2/qlora-bf16.json" --shape smollm2 --vocab 49152 --autocast bf16
# Ours in f32, then with --compute-dtype auto (bf16 products where this CPU's bf16 hardware
# measures faster: AMX), each against both peer rows. With the default model cached, ours
# trains its real weights (the peer: random weights of the same shape).
for dtype in f32 auto; do
  echo "== ours (RAYON_NUM_THREADS=2, --compute-dtype $dtype)"
  RAYON_NUM_THREADS=2 cargo bench -q --bench train_step -- --shape smollm2 --vocab 49152 --modes qlora \
    --compute-dtype "$dtype" --peer "$out/smollm2"
done
$only_smollm2 && exit 0

mkdir -p "$out/peer"
for mode in full lora qlora; do
  echo "== peer: $mode"
  peer "$mode" "$out/peer/$mode.json"
done
echo
echo "== ours (RAYON_NUM_THREADS=2)"
RAYON_NUM_THREADS=2 cargo bench -q --bench train_step -- --peer "$out/peer"
