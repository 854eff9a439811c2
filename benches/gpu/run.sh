#!/usr/bin/env bash
# Runs the GPU check (issue #25) from the kit that build.sh made, on the machine it was carried
# to, writing to $OUT (or --out DIR). First it says what the machine has: the NVIDIA driver, the
# Vulkan loader, the Vulkan driver manifests (ICDs); a missing piece is named and, where the
# NVIDIA driver is there but its Vulkan manifest is not (a container given only the compute
# libraries), a manifest for its library is written so that the loader finds it.
#
#   bash benches/gpu/run.sh              # on the GPU machine, within 8 minutes
#   bash benches/gpu/run.sh --dry-run    # small sizes on any Vulkan device, lavapipe included
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=benches/gpu/kit
dry=""
out="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry="--dry-run" ;;
    --out) out="$2"; shift ;;
    *) echo "run.sh: unknown argument $1 (--dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || out="$PWD/gpu-check-out"
mkdir -p "$out"
if [ ! -f "$kit/gpu_check.gz" ]; then
  echo "run.sh: $kit/gpu_check.gz is missing: run benches/gpu/build.sh first (and carry $kit)" >&2
  exit 2
fi
{
  echo "== machine"
  uname -a
  echo "kit: $(cat "$kit/commit" 2>/dev/null || echo 'commit unknown'), $(du -sh "$kit" | cut -f1)"
  echo "== NVIDIA driver"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  cat /proc/driver/nvidia/version 2>/dev/null || echo "/proc/driver/nvidia/version: none"
  echo "== Vulkan loader"
  system_loader=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
  if [ -n "$system_loader" ]; then
    echo "system: $system_loader"
  elif [ -f "$kit/lib/libvulkan.so.1" ]; then
    echo "system: none; using the carried $kit/lib/libvulkan.so.1"
  else
    echo "system: none, and none carried: wgpu cannot start"
  fi
  echo "== Vulkan driver manifests (ICDs)"
  ls -1 /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d 2>/dev/null || true
} 2>&1 | tee "$out/environment.txt"

system_loader=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
if [ -z "$system_loader" ] && [ -f "$kit/lib/libvulkan.so.1" ]; then
  export LD_LIBRARY_PATH="$PWD/$kit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The NVIDIA Vulkan driver lives in libGLX_nvidia.so.0; containers given only the compute
# capability have the library (sometimes) but not its manifest.
if [ -z "$dry" ] && ! grep -qs nvidia /usr/share/vulkan/icd.d/* /etc/vulkan/icd.d/* /usr/local/share/vulkan/icd.d/*; then
  glx=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia\.so\.0 .*x86-64/ {print $NF; exit}')
  if [ -n "$glx" ]; then
    printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3"}}\n' "$glx" > "$tmp/nvidia_icd.json"
    export VK_DRIVER_FILES="$tmp/nvidia_icd.json" VK_ICD_FILENAMES="$tmp/nvidia_icd.json"
    echo "run.sh: no NVIDIA Vulkan manifest installed; wrote one for $glx" | tee -a "$out/environment.txt"
  else
    echo "run.sh: no NVIDIA Vulkan manifest and no libGLX_nvidia.so.0: the driver's Vulkan part is not on this machine (NVIDIA_DRIVER_CAPABILITIES lacks graphics?)" | tee -a "$out/environment.txt" >&2
  fi
fi
gunzip -c "$kit/gpu_check.gz" > "$tmp/gpu_check" && chmod +x "$tmp/gpu_check"
limit=480
[ -z "$dry" ] || limit=1200
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$tmp}"
timeout "$limit" "$tmp/gpu_check" $dry --out "$out" 2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 124 ] || echo "run.sh: the check ran past ${limit} s; $out keeps the sections it finished" >&2
exit "$rc"
