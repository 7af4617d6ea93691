#!/usr/bin/env bash
# Sets up the PyTorch + Hugging Face transformers reference side of the CPU benchmark
# (benches/torch_reference.py) in a virtual environment, and prints that environment's python
# as its last line (point TORCH_PYTHON at it).
#
#   bash benches/setup_torch.sh                       # -> $PWD/.venv-torch
#   TORCH_VENV=/somewhere/else bash benches/setup_torch.sh
#   export TORCH_PYTHON="$(bash benches/setup_torch.sh | tail -n1)"
#
# Settings (environment):
#   TORCH_VENV            where the venv goes (default $PWD/.venv-torch; the venv gets its own
#                         `.gitignore` holding `*`, so it is never committed even inside the repo)
#   TORCH_INSTALL         `cpu` (default) or `cuda`, see below
#   TORCH_VERSION         default 2.15.0
#   TRANSFORMERS_VERSION  default 5.24.0
#   PYTHON                interpreter that creates the venv (default python3; torch 2.15 needs >= 3.11)
#
# Idempotent: a venv this script made for the same versions and mode is only re-verified; one made
# for other versions or another mode is deleted and rebuilt; an existing venv it did not make is
# installed into, never deleted.
#
# What was tried (x86_64, Debian 12, Python 3.11.7, PyPI the only index reachable):
#  1. `pip install --no-deps torch==2.15.0` (torch-2.15.0-cp311-cp311-manylinux_2_28_x86_64.whl,
#     539 MB, version string 2.15.0+cu132) plus its pure-python requirements: `import torch`
#     FAILS with `ValueError: libcublasLt.so.*[0-9] not found in the system path`. PyPI's x86_64
#     torch wheel is the CUDA 13.2 build: libtorch_cpu.so itself needs libcudart.so.13 and
#     libcupti.so.13, and libtorch.so / libtorch_python.so need libtorch_cuda.so, which needs
#     cublas, cublasLt, cudnn, cufft, cufile, cusparse, cusparseLt, nccl, nvrtc and nvshmem.
#  2. The CPU-only `+cpu` wheels are published only on PyTorch's own index, which this machine
#     cannot reach. Debian 12's python3-torch is 1.13.1 (too old for transformers 5, built on the
#     generic BLAS and dragging in OpenCV/FFmpeg): looked at with apt-cache, not used.
#  3. TORCH_INSTALL=cuda: plain `pip install torch==2.15.0`. Works (the standard install), but it
#     downloads 2.8 GB in 28 wheels (nvidia-cudnn-cu13 519 MB, nvidia-cublas 405 MB, triton
#     286 MB, nvidia-cusolver 228 MB, nvidia-cufft 218 MB, nvidia-nccl-cu13 216 MB,
#     nvidia-cusparselt-cu13 170 MB, nvidia-cusparse 151 MB, nvidia-nvshmem-cu13 135 MB, ...),
#     none of which a CPU run calls; the venv is 5.6 GB; ~40 s download + 2m10s install here.
#     Loading the real CUDA libraries also adds ~350 MB to a process's max RSS (minilm-l6,
#     batch 4, seq 16: train 1204 MB vs 855 MB, infer 792 MB vs 443 MB with 4.), which would
#     skew the memory column of the comparison.
#  4. TORCH_INSTALL=cpu (default, what this script does): 1. plus, for each CUDA library the
#     wheel links against and the system lacks, a small stand-in shared library generated from
#     the wheel's own dynamic-symbol tables (same soname and symbol versions; every function
#     returns 100 = cudaErrorNoDevice, the *ErrorString/*ErrorName ones a message), compiled
#     with gcc into site-packages/torch/lib (13 files, ~330 KB together, listed in
#     torch/lib/CUDA_STAND_INS.txt). Then `import torch` works, torch.cuda.is_available() is
#     False, and every CPU kernel is the wheel's own unchanged libtorch_cpu.so (MKL 2024.2,
#     oneDNN 3.13.3, AVX512 dispatch; see torch.__config__.show()). Verified: import, a
#     BertForSequenceClassification forward/backward, AdamW steps, inference_mode, the fast
#     tokenizer, all three torch_reference.py subcommands; losses and logits print identical to
#     those of 3. Fresh run with an empty pip cache: 1m21s on a busy 2-core machine, ~600 MB
#     downloaded (torch 539 MB, the rest small), venv 1.6 GB. `pip` reports the nvidia-*, triton
#     and cuda-* requirements it skipped as unmet ("dependency conflicts"): expected. Needs gcc,
#     binutils (readelf, nm) and ldconfig; as root, missing ones are apt-get installed.
#  transformers 5.24.0 (with tokenizers 0.23.3, safetensors 0.8.0, huggingface-hub 2.4.0,
#  numpy 2.4.6) installs from PyPI with its ordinary dependencies and does not pull torch.
set -euo pipefail

VENV="${TORCH_VENV:-$PWD/.venv-torch}"
MODE="${TORCH_INSTALL:-cpu}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.24.0}"
BASE_PYTHON="${PYTHON:-python3}"
MARKER_NAME=".easynlp-torch-setup"
WANT="torch=$TORCH_VERSION transformers=$TRANSFORMERS_VERSION mode=$MODE"

say() { echo "setup_torch: $*" >&2; }
die() { say "error: $*"; exit 1; }

case "$MODE" in cpu|cuda) ;; *) die "TORCH_INSTALL must be cpu or cuda, not '$MODE'" ;; esac
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
MARKER="$VENV/$MARKER_NAME"

verify() {
    # A tiny randomly initialised BERT classifier: forward + backward + AdamW step, then inference.
    "$PY" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" <<'PY' >&2
import sys, time
t0 = time.time()
import torch, transformers
from transformers import BertConfig, BertForSequenceClassification
want_torch, want_tf = sys.argv[1], sys.argv[2]
assert torch.__version__.split("+")[0] == want_torch, (torch.__version__, want_torch)
assert transformers.__version__ == want_tf, (transformers.__version__, want_tf)
torch.manual_seed(0)
cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, num_labels=2)
model = BertForSequenceClassification(cfg)
ids = torch.randint(5, 200, (4, 16))
labels = torch.tensor([0, 1, 1, 0])
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
out.loss.backward()
opt.step()
grad = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
assert grad > 0 and torch.isfinite(out.loss)
model.eval()
with torch.inference_mode():
    logits = model(input_ids=ids).logits
assert logits.shape == (4, 2)
print(f"verified: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}, "
      f"mkl: {torch.backends.mkl.is_available()}, mkldnn: {torch.backends.mkldnn.is_available()}, "
      f"threads: {torch.get_num_threads()}), transformers {transformers.__version__}; "
      f"tiny BertForSequenceClassification loss {out.loss.item():.4f}, forward/backward/AdamW/"
      f"inference ok in {time.time() - t0:.1f}s")
PY
}

# Fast path: already set up for these versions and this mode.
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && [ -x "$PY" ]; then
    say "$VENV already set up ($WANT); verifying"
    if verify; then
        echo "$PY"
        exit 0
    fi
    say "verification failed: rebuilding"
fi
if [ -f "$MARKER" ]; then
    say "$VENV was set up for '$(cat "$MARKER")', rebuilding for '$WANT'"
    rm -rf "$VENV"
fi

if [ ! -x "$PY" ]; then
    command -v "$BASE_PYTHON" >/dev/null || die "no $BASE_PYTHON (set PYTHON)"
    "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$BASE_PYTHON is $("$BASE_PYTHON" -V 2>&1); torch $TORCH_VERSION needs Python >= 3.11 (set PYTHON)"
    say "creating venv $VENV with $("$BASE_PYTHON" -V 2>&1)"
    "$BASE_PYTHON" -m venv "$VENV"
fi
# Never committed, wherever it lives.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
rm -f "$MARKER"

PIP=("$PY" -m pip install --no-input --progress-bar off --disable-pip-version-check)

if [ "$MODE" = cuda ]; then
    say "installing torch==$TORCH_VERSION with its CUDA dependencies (~2.8 GB download)"
    "${PIP[@]}" "torch==$TORCH_VERSION" >&2
else
    for tool in gcc readelf nm ldconfig; do
        if ! command -v "$tool" >/dev/null && ! [ -x "/sbin/$tool" ]; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "installing gcc and binutils with apt-get"
                apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc binutils >&2
                break
            fi
            die "$tool not found: install gcc and binutils, or use TORCH_INSTALL=cuda"
        fi
    done
    say "installing torch==$TORCH_VERSION without its CUDA dependencies"
    "${PIP[@]}" --no-deps "torch==$TORCH_VERSION" >&2
    # torch's own requirements, less the CUDA / triton ones and the extras.
    mapfile -t DEPS < <("$PY" - <<'PY'
import re
from importlib.metadata import requires
for req in requires("torch") or []:
    spec, _, marker = req.partition(";")
    if "extra" in marker:
        continue
    name = re.split(r"[\s\[<>=!~(]", spec.strip(), maxsplit=1)[0].lower()
    if name.startswith(("nvidia", "cuda", "triton")):
        continue
    print(spec.strip())
PY
)
    say "installing torch's CPU-side requirements: ${DEPS[*]} numpy"
    "${PIP[@]}" "${DEPS[@]}" numpy >&2
    say "generating stand-ins for the CUDA libraries the wheel links against"
    PATH="$PATH:/sbin:/usr/sbin" "$PY" - "$("$PY" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')" <<'PY' >&2
# Stand-in shared libraries for the CUDA libraries that PyPI's torch wheel links against, so that
# `import torch` works on a CPU-only machine without the nvidia-* wheels. Each one carries the
# soname and the symbol versions the wheel's libraries ask for; every function returns 100
# (cudaErrorNoDevice; non-zero is failure for every CUDA library), the ones that name an error
# return a message. No CPU code path calls them: torch.cuda.is_available() is False.
import glob, os, re, subprocess, sys, tempfile

torch_dir = sys.argv[1]
lib_dir = os.path.join(torch_dir, "lib")
listing = os.path.join(lib_dir, "CUDA_STAND_INS.txt")
ours = set()
if os.path.exists(listing):
    ours = {l.strip() for l in open(listing) if l.strip() and not l.startswith("#")}
# libcaffe2_nvrtc.so is dlopen()ed only on first GPU JIT use and needs the driver itself
# (libcuda.so.1), which is deliberately not faked.
elves = [p for p in glob.glob(os.path.join(lib_dir, "*.so*"))
         if not os.path.basename(p).startswith("libcaffe2_nvrtc") and os.path.basename(p) not in ours]
elves += glob.glob(os.path.join(torch_dir, "_C*.so"))
present = {p for p in os.listdir(lib_dir) if p not in ours}


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


system = {}
for line in run("ldconfig", "-p").splitlines()[1:]:
    m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
    if m and "x86-64" in m.group(2):
        system.setdefault(m.group(1), m.group(3))

needed = {e: re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-W", "-d", e))
          for e in elves}
missing = sorted({n for ns in needed.values() for n in ns if n not in present and n not in system})
if not missing:
    print("no stand-ins needed: every library the wheel links against is present")
    sys.exit(0)

# Symbols that the present libraries define must not be shadowed.
defined = set()
providers = [os.path.join(lib_dir, p) for p in present if ".so" in p]
providers += sorted({system[n] for ns in needed.values() for n in ns if n in system})
for p in providers:
    for line in run("nm", "-D", "--defined-only", p).splitlines():
        parts = line.split()
        if len(parts) >= 3:
            defined.add(parts[2].split("@")[0])

stubs = {n: {} for n in missing}        # soname -> {symbol: (version or None, ELF type)}
versions = {n: set() for n in missing}  # soname -> version names asked for
owners = [("nccl", "libnccl"), ("cusparseLt", "libcusparseLt"), ("cuFile", "libcufile"),
          ("nvshmem", "libnvshmem"), ("cupti", "libcupti"), ("cudnn", "libcudnn")]
for e in elves:
    vfile, cur = {}, None
    for line in run("readelf", "-W", "-V", e).splitlines():
        m = re.search(r"File: (\S+)\s+Cnt:", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags:", line)
        if m and cur:
            vfile[m.group(1)] = cur
            if cur in versions:
                versions[cur].add(m.group(1))
    for line in run("readelf", "-W", "--dyn-syms", e).splitlines():
        f = line.split()
        if len(f) < 8 or f[6] != "UND" or f[4] == "WEAK":
            continue
        name, typ = f[7], f[3]
        if "@" in name:
            sym, ver = name.split("@", 1)
            lib = vfile.get(ver.lstrip("@").split()[0])
            if lib in stubs:
                stubs[lib][sym] = (ver.lstrip("@").split()[0], typ)
        elif name not in defined:
            # Unversioned: any stand-in in the dependency tree satisfies the loader; prefer the
            # library the name belongs to, else the CUDA runtime's.
            owner = None
            for prefix, soname in owners:
                if name.startswith(prefix):
                    owner = next((m for m in missing if m.startswith(soname)), None)
                    break
            if owner is None:
                owner = next((m for m in missing if m.startswith("libcudart")), missing[0])
            stubs[owner].setdefault(name, (None, typ))

cc = os.environ.get("CC", "gcc")
with tempfile.TemporaryDirectory() as tmp:
    for lib, syms in stubs.items():
        src = ['static const char msg[] = "CUDA unavailable: CPU-only torch install (stand-in library)";']
        for sym, (_, typ) in sorted(syms.items()):
            if typ == "OBJECT":
                src.append(f"char {sym}[256];")
            elif re.search(r"(Error|Status)(String|Name)$", sym):
                src.append(f"const char *{sym}(void) {{ return msg; }}")
            else:
                src.append(f"long {sym}(void) {{ return 100; }}")
        c, vs = os.path.join(tmp, lib + ".c"), os.path.join(tmp, lib + ".map")
        with open(c, "w") as fh:
            fh.write("\n".join(src) + "\n")
        vers = sorted(versions[lib])
        with open(vs, "w") as fh:
            if not vers:
                fh.write("{ global: " + "".join(n + "; " for n in syms) + "local: *; };\n")
            for i, v in enumerate(vers):
                last = i == len(vers) - 1  # unversioned references bind to the last node
                names = [n for n, (sv, _) in syms.items() if sv == v or (sv is None and last)]
                fh.write(v + " { global: " + "".join(n + "; " for n in names)
                         + ("local: *; " if last else "") + "};\n")
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-w", "-o", os.path.join(lib_dir, lib), c,
                        "-Wl,-soname," + lib, "-Wl,--version-script=" + vs], check=True)
        print(f"  stand-in {lib}: {len(syms)} symbols")
with open(listing, "w") as fh:
    fh.write("# CPU-only stand-ins generated by benches/setup_torch.sh; not NVIDIA's libraries\n")
    fh.write("".join(lib + "\n" for lib in stubs))
PY
fi

say "installing transformers==$TRANSFORMERS_VERSION"
"${PIP[@]}" "transformers==$TRANSFORMERS_VERSION" >&2

verify
echo "$WANT" > "$MARKER"
say "venv size: $(du -sh "$VENV" | cut -f1)"
echo "$PY"
