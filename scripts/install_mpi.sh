#!/usr/bin/env bash
# Installs what `--features mpi` needs on Debian / Ubuntu: Open MPI (headers, libraries, `mpirun`)
# and libclang (the `mpi` crate generates its bindings with bindgen). Idempotent: does nothing when
# everything is already there. Runs as root, or through sudo when it is available.
set -euo pipefail
PKGS=(libopenmpi-dev openmpi-bin libclang-dev)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_mpi.sh: ${PKGS[*]} already installed" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_mpi.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be empty on a fresh image: update once, then install.
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
