#!/usr/bin/env bash
# Meta-KD students: EasyNLP's meta_student_distill.sh commands (run through `easynlp --mode=train`
# with distill_stage=first, then distill_stage=second) for one domain, distilled from the
# meta-teacher of examples/metakd_teacher.sh, then evaluation of the student on that domain of the
# test split.
#
#   SENTI          folder with train_with_weights.tsv, dev_standard.tsv, test_standard.tsv
#                  (default: the output of examples/metakd_prep.sh)
#   TEACHER        the meta-teacher checkpoint (default: examples/metakd_teacher.sh's)
#   STUDENT_MODEL  pretrained student BERT: directory or model-zoo name, with the teacher's
#                  vocabulary (default: the shared minilm-l3, for the minilm-l6 teacher;
#                  EasyNLP's tutorial distils bert-base-uncased into bert-tiny-uncased)
#   GENRE          the domain distilled (default: books)
#   EPOCHS1, EPOCHS2, SEQ_LEN, BATCH, LR  (default: 1, 10, 128, 16, 3e-5 as the tutorial)
#   WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SENTI="${SENTI:-$REPO/examples-out/metakd_prep/data/SENTI}"
TEACHER="${TEACHER:-$REPO/examples-out/metakd_teacher/tmp/meta_teacher}"
STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/minilm-l3}"
GENRE="${GENRE:-books}"
EPOCHS1="${EPOCHS1:-1}"
EPOCHS2="${EPOCHS2:-10}"
SEQ_LEN="${SEQ_LEN:-128}"
BATCH="${BATCH:-16}"
LR="${LR:-3e-5}"
WORK="${WORK:-$REPO/examples-out/metakd_students}"
SENTI="$(cd "$SENTI" && pwd)"
TEACHER="$(cd "$TEACHER" && pwd)"
if [[ -d "$STUDENT_MODEL" ]]; then STUDENT_MODEL="$(cd "$STUDENT_MODEL" && pwd)"; fi
mkdir -p "$WORK" && cd "$WORK"
SCHEMA=guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1

echo "=========[ Student stage first ($GENRE): attention, hidden-state and domain distillation ]========="
easynlp --mode=train \
    --app_name=text_classify \
    --tables=$SENTI/train_with_weights.tsv,$SENTI/dev_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --label_enumerate_values=positive,negative \
    --checkpoint_dir=./tmp/$GENRE/meta_student_pretrain/ \
    --learning_rate=$LR \
    --epoch_num=$EPOCHS1 \
    --random_seed=42 \
    --logging_steps=20 \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --user_defined_parameters="pretrain_model_name_or_path=$STUDENT_MODEL teacher_model_path=$TEACHER domain_loss_weight=0.5 distill_stage=first genre=$GENRE T=2"

echo "=========[ Student stage second ($GENRE): logit distillation ]========="
easynlp --mode=train \
    --app_name=text_classify \
    --tables=$SENTI/train_with_weights.tsv,$SENTI/dev_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --label_enumerate_values=positive,negative \
    --checkpoint_dir=./tmp/$GENRE/meta_student_fintune/ \
    --learning_rate=$LR \
    --epoch_num=$EPOCHS2 \
    --random_seed=42 \
    --logging_steps=20 \
    --save_checkpoint_steps=50 \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --user_defined_parameters="pretrain_model_name_or_path=./tmp/$GENRE/meta_student_pretrain/ teacher_model_path=$TEACHER domain_loss_weight=0.5 distill_stage=second genre=$GENRE T=2"

echo "=========[ Evaluate the student on $GENRE ]========="
easynlp --mode=evaluate \
    --app_name=text_classify \
    --tables=$SENTI/test_standard.tsv \
    --input_schema=$SCHEMA \
    --first_sequence=text_a \
    --second_sequence=text_b \
    --label_name=label \
    --checkpoint_dir=./tmp/$GENRE/meta_student_fintune/ \
    --sequence_length=$SEQ_LEN \
    --micro_batch_size=$BATCH \
    --outputs=student.test.$GENRE.json \
    --user_defined_parameters="genre=$GENRE" > /dev/null
echo "student in $WORK/tmp/$GENRE/meta_student_fintune, test metrics in $WORK/student.test.$GENRE.json"
