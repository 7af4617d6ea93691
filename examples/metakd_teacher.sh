#!/usr/bin/env bash
# Meta-KD meta-teacher: EasyNLP's meta_teacher_train.sh command (run through `easynlp --mode=train`)
# on the tables of examples/metakd_prep.sh, then per-domain evaluation of the teacher on the test
# split (every domain and the average, then one domain with genre=...).
#
#   SENTI          folder with train_with_weights.tsv, dev_standard.tsv, test_standard.tsv
#                  (default: the output of examples/metakd_prep.sh)
#   TEACHER_MODEL  pretrained BERT: directory or model-zoo name (default: the shared minilm-l6;
#                  EasyNLP's tutorial uses bert-base-uncased)
#   EPOCHS, SEQ_LEN, BATCH, LR  (default: 1, 128, 16, 3e-5 as the tutorial)
#   GENRE          domain evaluated alone at the end (default: books)
#   WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SENTI="${SENTI:-$REPO/examples-out/metakd_prep/data/SENTI}"
TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/minilm-l6}"
EPOCHS="${EPOCHS:-1}"
SEQ_LEN="${SEQ_LEN:-128}"
BATCH="${BATCH:-16}"
LR="${LR:-3e-5}"
GENRE="${GENRE:-books}"
WORK="${WORK:-$REPO/examples-out/metakd_teacher}"
SENTI="$(cd "$SENTI" && pwd)"
if [[ -d "$TEACHER_MODEL" ]]; then TEACHER_MODEL="$(cd "$TEACHER_MODEL" && pwd)"; fi
mkdir -p "$WORK" && cd "$WORK"
SCHEMA=guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1

echo '=========[ Train the meta-teacher ]========='
easynlp --mode=train \
    --app_name=text_classify \
    --tables=$SENTI/train_with_weights.tsv,$SENTI/dev_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --label_enumerate_values=positive,negative \
    --checkpoint_dir=./tmp/meta_teacher/ \
    --learning_rate=$LR \
    --epoch_num=$EPOCHS \
    --random_seed=42 \
    --logging_steps=20 \
    --save_checkpoint_steps=50 \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --user_defined_parameters="pretrain_model_name_or_path=$TEACHER_MODEL use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5"

echo '=========[ Evaluate the meta-teacher on every domain of the test split ]========='
easynlp --mode=evaluate \
    --app_name=text_classify \
    --tables=$SENTI/test_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --checkpoint_dir=./tmp/meta_teacher/ \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --outputs=teacher.test.json > /dev/null

echo "=========[ Evaluate the meta-teacher on $GENRE ]========="
easynlp --mode=evaluate \
    --app_name=text_classify \
    --tables=$SENTI/test_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --checkpoint_dir=./tmp/meta_teacher/ \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --outputs=teacher.test.$GENRE.json \
    --user_defined_parameters="genre=$GENRE" > /dev/null
echo "meta-teacher in $WORK/tmp/meta_teacher, test metrics in $WORK/teacher.test.json and teacher.test.$GENRE.json"
