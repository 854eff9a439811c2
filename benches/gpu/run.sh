#!/usr/bin/env bash
# Runs the GPU check (issue #25) from the kit that build.sh made, on the machine it was carried
# to, writing to $OUT (or --out DIR). First it says what the machine has: the NVIDIA driver, the
# Vulkan loader, the Vulkan driver manifests (ICDs); a missing piece is named. The NVIDIA
# manifest is looked for where the GPU machines keep it (/usr/local/nvidia/share/vulkan/icd.d),
# and written for the driver's library where only the library is there; without a system
# loader the carried one is used.
#
#   bash benches/gpu/run.sh              # on the GPU machine, within 8 minutes
#   bash benches/gpu/run.sh --dry-run    # small sizes on any Vulkan device, lavapipe included
set -uo pipefail
dry=""
out="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry="--dry-run" ;;
    --out)
      [ $# -ge 2 ] || { echo "run.sh: --out needs a folder" >&2; exit 2; }
      out="$2"; shift ;;
    *) echo "run.sh: unknown argument $1 (--dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || out="$PWD/gpu-check-out"
mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "run.sh: cannot create $out" >&2; exit 2; }
cd "$(dirname "$0")/../.."
kit="$PWD/benches/gpu/kit"
if [ ! -f "$kit/gpu_check.gz" ]; then
  echo "run.sh: $kit/gpu_check.gz is missing: run benches/gpu/build.sh first (and carry benches/gpu/kit)" >&2
  exit 2
fi

manifests="/usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d"
# The first place that has the named library: ldconfig's cache, then the driver's own folders.
find_lib() {
  local hit
  hit=$(ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n && /x86-64/ {print $NF; exit}')
  if [ -z "$hit" ]; then
    for d in ${LD_LIBRARY_PATH//:/ } /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
      if [ -e "$d/$1" ]; then hit="$d/$1"; break; fi
    done
  fi
  echo "$hit"
}
system_loader=$(find_lib libvulkan.so.1)
{
  echo "== machine"
  uname -a
  echo "kit: commit $(cat "$kit/commit" 2>/dev/null || echo unknown), $(du -sh "$kit" | cut -f1)"
  echo "== NVIDIA driver"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  cat /proc/driver/nvidia/version 2>/dev/null || echo "/proc/driver/nvidia/version: none"
  echo "== Vulkan loader"
  if [ -n "$system_loader" ]; then
    echo "system: $system_loader"
  elif [ -f "$kit/lib/libvulkan.so.1" ]; then
    echo "system: none; using the carried benches/gpu/kit/lib/libvulkan.so.1"
  else
    echo "system: none, and none carried: wgpu cannot start"
  fi
  echo "== Vulkan driver manifests (ICDs)"
  for d in $manifests; do
    for f in "$d"/*.json; do
      [ -e "$f" ] || continue
      echo "$f: $(tr -d '\n ' < "$f" | cut -c1-200)"
    done
  done
} 2>&1 | tee "$out/environment.txt"
say() { echo "run.sh: $*" | tee -a "$out/environment.txt" >&2; }

if [ -z "$system_loader" ] && [ -f "$kit/lib/libvulkan.so.1" ]; then
  export LD_LIBRARY_PATH="$kit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# Beside the kit, not in /tmp (which may be mounted noexec).
tmp=$(mktemp -d "$kit/run.XXXXXX") || { echo "run.sh: cannot write in $kit" >&2; exit 2; }
trap 'rm -rf "$tmp"' EXIT
if [ -z "$dry" ]; then
  nvidia_manifest=""
  for d in $manifests; do
    for f in "$d"/*.json; do
      if [ -e "$f" ] && grep -qi nvidia "$f"; then nvidia_manifest="$f"; break 2; fi
    done
  done
  if [ -n "$nvidia_manifest" ]; then
    export VK_DRIVER_FILES="$nvidia_manifest" VK_ICD_FILENAMES="$nvidia_manifest"
    say "the NVIDIA Vulkan driver: $nvidia_manifest"
  else
    glx=$(find_lib libGLX_nvidia.so.0)
    if [ -n "$glx" ]; then
      printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' "$glx" > "$tmp/nvidia_icd.json"
      export VK_DRIVER_FILES="$tmp/nvidia_icd.json" VK_ICD_FILENAMES="$tmp/nvidia_icd.json"
      say "no NVIDIA Vulkan manifest installed; wrote one for $glx"
    else
      say "no NVIDIA Vulkan manifest and no libGLX_nvidia.so.0: the driver's Vulkan part is not on this machine (NVIDIA_DRIVER_CAPABILITIES without graphics?)"
    fi
  fi
fi
if ! gunzip -c "$kit/gpu_check.gz" > "$tmp/gpu_check" || ! chmod +x "$tmp/gpu_check"; then
  echo "run.sh: cannot unpack $kit/gpu_check.gz" >&2
  exit 2
fi
# The check stops itself at 450 s (--deadline-s); the timeout is the backstop.
limit=480
[ -z "$dry" ] || limit=1200
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$tmp}"
timeout -k 15 "$limit" "$tmp/gpu_check" $dry --deadline-s $((limit - 30)) --out "$out" \
  --samples "$kit/chitchat-samples.json" 2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || say "the check ran past ${limit} s; $out keeps the sections it finished"
exit "$rc"
