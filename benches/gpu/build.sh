#!/usr/bin/env bash
# Builds the GPU check's kit (issue #25): examples/gpu_check for wgpu (Vulkan), stripped and
# gzipped, with the Vulkan loader beside it for a machine that lacks one, and the bundled data
# tokenized (needs the default model cached), in benches/gpu/kit/
# (ignored by git; the `run` tool carries it with `carry: ["benches/gpu/kit"]`).
# Fails if the kit is over 60 MiB (the carried limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-qlora/target}"
kit=benches/gpu/kit
# --features wgpu as .ci/run builds the examples, so that neither rebuilds the other's.
# GPU_CHECK_FEATURES=vulkan builds it with CubeCL's SPIR-V compiler instead (cooperative
# matrices on NVIDIA; untried: lavapipe crashes on its pipelines, see the README).
cargo build --release --features "${GPU_CHECK_FEATURES:-wgpu}" --example gpu_check
rm -rf "$kit"
mkdir -p "$kit/lib"
strip -o "$kit/gpu_check" "$CARGO_TARGET_DIR/release/examples/gpu_check"
gzip -9 -f "$kit/gpu_check"
# The loader (libvulkan.so.1) from this machine: the GPU machine's NVIDIA driver brings its ICD,
# not always the loader. run.sh uses the system's loader first and this one only without it.
loader=$( (ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}') || true)
if [ -n "$loader" ]; then
  cp -L "$loader" "$kit/lib/libvulkan.so.1"
else
  echo "build.sh: no libvulkan.so.1 here to carry (apt-get install libvulkan1): the kit relies on the GPU machine's" >&2
fi
# The bundled conversations, tokenized by the default model's tokenizer (the model is too big to
# carry): what the check's fine-tune trains on.
"$CARGO_TARGET_DIR/release/examples/gpu_check" --prepare-samples "$kit/chitchat-samples.json"
git rev-parse HEAD > "$kit/commit" 2>/dev/null || true
# The GPU machine's C library must be at least this (the kit is linked against this machine's).
echo "kit: needs $(objdump -T "$CARGO_TARGET_DIR/release/examples/gpu_check" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1) or newer"
bytes=$(du -cb "$kit" | tail -1 | cut -f1)
echo "kit: $(du -ab "$kit" | sort -k2 | awk '{printf "%s %.1f MiB; ", $2, $1 / 1048576}')"
echo "kit total: $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}') MiB (limit 60 MiB)"
if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
  echo "build.sh: the kit is over 60 MiB" >&2
  exit 1
fi
