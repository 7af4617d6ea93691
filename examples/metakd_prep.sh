#!/usr/bin/env bash
# Meta-KD data preparation on the Amazon multi-domain reviews: the four steps of EasyNLP's
# run_meta_preprocess.sh (generate_senti_data.py, extract_embeddings.py, generate_meta_weights.py,
# generate_dev_file.py) as easynlp modes. Writes, under $WORK/data/SENTI:
#   train.tsv dev.tsv test.tsv       the split (review, domain, sentiment), 81/9/10 % per domain
#   train.embeddings.tsv             pretrained-encoder embedding of every training review
#   train_with_weights.tsv           the training table with the prototype weights (meta-teacher input)
#   dev_standard.tsv test_standard.tsv   dev/test in the same layout, weight 0
#
#   DATA     folder of per-domain review folders: <domain>/{train,dev}.tsv or Blitzer's
#            sorted_data_acl/<domain>/{positive,negative}.review (default: ../shared/data/blitzer-amazon)
#   MODEL    pretrained BERT for the embeddings: directory or model-zoo name (default: the shared minilm-l6)
#   DOMAINS  domain_label (default: books,dvd,electronics,kitchen)
#   ROWS_PER_DOMAIN  keep only the first N rows of each domain in each split, to run quickly (default: all)
#   SEED     seed of the split (default: 42)
#   SEQ_LEN, BATCH   --sequence_length and --micro_batch_size of the embeddings (default: 128, 64)
#   WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA="${DATA:-$SHARED/data/blitzer-amazon}"
MODEL="${MODEL:-$SHARED/models/minilm-l6}"
DOMAINS="${DOMAINS:-books,dvd,electronics,kitchen}"
SEED="${SEED:-42}"
SEQ_LEN="${SEQ_LEN:-128}"
BATCH="${BATCH:-64}"
WORK="${WORK:-$REPO/examples-out/metakd_prep}"
# Relative paths would break after the cd below.
DATA="$(cd "$DATA" && pwd)"
if [[ -d "$MODEL" ]]; then MODEL="$(cd "$MODEL" && pwd)"; fi
mkdir -p "$WORK" && cd "$WORK"
SENTI=data/SENTI

echo '=========[ Split the reviews into train/dev/test ]========='
easynlp --mode=metakd_split \
    --tables="$DATA" \
    --outputs=$SENTI \
    --random_seed=$SEED \
    --user_defined_parameters="domain_label=$DOMAINS"

if [[ -n "${ROWS_PER_DOMAIN:-}" ]]; then
    for split in train dev test; do
        awk -F'\t' -v n="$ROWS_PER_DOMAIN" 'NR == 1 || seen[$2]++ < n' $SENTI/$split.tsv > $SENTI/$split.tsv.part
        mv $SENTI/$split.tsv.part $SENTI/$split.tsv
    done
fi

echo '=========[ Embed the training reviews with the pretrained encoder ]========='
easynlp --mode=metakd_embeddings \
    --tables=$SENTI/train.tsv \
    --outputs=$SENTI/train.embeddings.tsv \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --user_defined_parameters="pretrain_model_name_or_path=$MODEL domain_label=$DOMAINS"

echo '=========[ Compute the prototype weights ]========='
easynlp --mode=metakd_weights \
    --tables=$SENTI/train.embeddings.tsv \
    --outputs=$SENTI/train_with_weights.tsv \
    --user_defined_parameters="domain_label=$DOMAINS"

echo '=========[ Lay out the dev and test tables ]========='
for split in dev test; do
    easynlp --mode=metakd_dev \
        --tables=$SENTI/$split.tsv \
        --outputs=$SENTI/${split}_standard.tsv \
        --user_defined_parameters="domain_label=$DOMAINS"
done
echo "Meta-KD tables in $WORK/$SENTI: train_with_weights.tsv, dev_standard.tsv, test_standard.tsv"
