#!/usr/bin/env bash
# One prepared command that checks the CUDA build on a GPU machine in under 8 minutes (README, CUDA):
#
#   step 0  the GPU (nvidia-smi), the CUDA libraries our binary links against, torch.cuda
#   step 1  logits of a fixed minilm-l6 classifier (trained a few steps here by our binary) against
#           transformers' BertForSequenceClassification on the GPU, f32 with TF32 off: max abs
#           difference <= 1e-3, else FAIL
#   step 2  one epoch of minilm-l6 on the first 4,000 SST-2 rows (seq 128, batch 32, lr 3e-5,
#           seed 42, --worker_gpu=1): dev accuracy within 1 point of the CPU figure in
#           scripts/gpu_check_reference.json, else FAIL
#   step 3  training and inference examples/s at batch 32 x 128 against PyTorch eager (f32, and
#           bf16 autocast against our --use_amp) for minilm-l6 and a BERT-base-shaped model of
#           random weights
#   step 4  2 MPI ranks on one GPU against 1 rank (only when the binary was built with `mpi` and
#           `mpirun` exists; else a "skipped: ..." line)
#
# then prints one markdown table and writes it to $OUT/gpu_check.md ($OUT set) or to the work
# folder, with gpu_check.json and the logs of every process. Exit status: 0 when no step failed.
#
# The GPU machine needs no Rust toolchain and no network: build the binary elsewhere and carry it.
#   eval "$(bash scripts/setup_cuda_toolchain.sh)"; cargo build --release --features cuda
#   bash scripts/gpu_check.sh                          # on the GPU machine, in the repository root
#
# Settings (environment):
#   EASYNLP        the CUDA build of easynlp (default target/release/easynlp)
#   EASYNLP_SHARED the shared folder with models/minilm-l6, minilm-l3 and data/glue-sst2 (default ../shared)
#   TORCH_PYTHON   Python with torch + transformers (default /opt/torch/.venv/bin/python; dry run:
#                  that, else python3). Its nvidia/*/lib folders (the CUDA wheels) go on
#                  LD_LIBRARY_PATH for our binary
#   GPU_CHECK_CUDA_LIBS  more folders for LD_LIBRARY_PATH (colon-separated)
#   GPU_CHECK_WORK work folder (default a new folder under ${TMPDIR:-/tmp})
#   GPU_CHECK_STEPS  the steps to run (default 0,1,2,3,4)
#   GPU_CHECK_DRY_RUN=1 or --dry-run: run on the CPU with the CPU binary and torch on the CPU, at
#                  reduced sizes; the device-specific parts are skipped with a line saying so.
#   Sizes and limits: GPU_CHECK_* in scripts/gpu_check.py (e.g. GPU_CHECK_BIG_SHAPE=L,H,A,I,
#   GPU_CHECK_FT_ROWS, GPU_CHECK_LIMIT_<step> seconds, GPU_CHECK_BUDGET_S for the whole run).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY="${GPU_CHECK_DRY_RUN:-0}"
STEPS="${GPU_CHECK_STEPS:-0,1,2,3,4}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --steps=*) STEPS="${arg#--steps=}" ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (--dry-run, --steps=0,1,2,3,4, --help)" >&2; exit 2 ;;
    esac
done
[[ "$DRY" == 0 || -z "$DRY" ]] && DRY=0 || DRY=1

EASYNLP="${EASYNLP:-$REPO/target/release/easynlp}"
SHARED="${EASYNLP_SHARED:-$REPO/../shared}"
if [[ -n "${TORCH_PYTHON:-}" ]]; then
    PY="$TORCH_PYTHON"
elif [[ -x /opt/torch/.venv/bin/python ]]; then
    PY=/opt/torch/.venv/bin/python
elif [[ "$DRY" == 1 ]]; then
    PY=python3
else
    echo "FAIL: no /opt/torch/.venv/bin/python: set TORCH_PYTHON to a Python with torch and transformers" >&2
    exit 2
fi
[[ -x "$EASYNLP" ]] || { echo "FAIL: easynlp binary $EASYNLP not found (set EASYNLP)" >&2; exit 2; }
"$PY" -c 'import torch, transformers, tokenizers, safetensors' 2>/dev/null \
    || { echo "FAIL: $PY cannot import torch, transformers, tokenizers and safetensors" >&2; exit 2; }
WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK"

if [[ "$DRY" == 1 ]]; then
    echo "SKIP device set-up: dry run: nvidia-smi, the CUDA libraries on LD_LIBRARY_PATH and CUDA itself are" \
         "not used; easynlp ($EASYNLP) and torch run on the CPU at reduced sizes"
    LIBS=""
else
    # The CUDA runtime, cuBLAS, cuRAND, NVRTC and NCCL of the torch venv's nvidia-* wheels
    # (site-packages/nvidia/*/lib, e.g. nvidia/cu13/lib): our binary links against them.
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    LIBS=""
    for d in "$SITE"/nvidia/*/lib; do
        [[ -d "$d" ]] && LIBS="${LIBS:+$LIBS:}$d"
    done
    [[ -n "${GPU_CHECK_CUDA_LIBS:-}" ]] && LIBS="${GPU_CHECK_CUDA_LIBS}${LIBS:+:$LIBS}"
    [[ -n "$LIBS" ]] || echo "warning: no nvidia/*/lib folder under $SITE: our binary may not find the CUDA libraries" >&2
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv || true
    else
        echo "warning: nvidia-smi not found" >&2
    fi
fi
export GPU_CHECK_LIB_PATH="$LIBS"
DRYFLAG=()
[[ "$DRY" == 1 ]] && DRYFLAG=(--dry-run)
exec "$PY" "$REPO/scripts/gpu_check.py" run "${DRYFLAG[@]}" --easynlp "$EASYNLP" --shared "$SHARED" \
    --work "$WORK" --steps "$STEPS"
