#!/bin/sh
# Installs what `--features mpi` needs (issue #37): Open MPI's `mpirun` and headers, and libclang
# for the `mpi` crate's bindgen. Idempotent; a no-op where `mpirun`, `mpicc` and libclang are
# there. Installing needs Debian's packages (apt-get, as root or through sudo); where that is not
# possible it says what to install and exits non-zero, so that CI fails rather than skips.
set -eu
have_all() {
  command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 &&
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1
}
if ! have_all; then
  if [ "$(id -u)" = 0 ]; then
    as_root=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo"
  else
    echo "Open MPI is not installed and this user cannot install it: as root, install Debian's" \
      "openmpi-bin libopenmpi-dev libclang-dev (or MPICH and libclang), then rerun" >&2
    exit 1
  fi
  command -v apt-get >/dev/null 2>&1 || {
    echo "no apt-get here: install Open MPI (mpirun, mpicc, headers) and libclang with this" \
      "system's package manager" >&2
    exit 1
  }
  export DEBIAN_FRONTEND=noninteractive
  $as_root apt-get update -qq || { echo "apt-get update failed: no Debian mirror reachable?" >&2; exit 1; }
  $as_root apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
have_all || { echo "mpirun, mpicc or libclang still missing after installing" >&2; exit 1; }
echo "MPI ready: $(mpirun --version 2>/dev/null | head -n 1)"
