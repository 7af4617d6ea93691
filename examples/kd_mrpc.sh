#!/usr/bin/env bash
# Vanilla KD on MRPC (single-tower text_match), with the commands of EasyNLP's
# examples/knowledge_distillation/run_vanilla_kd.sh: teacher fine-tune, teacher logits export,
# student KD, student predict; plus an evaluate of the student on dev.
#   TEACHER_MODEL / STUDENT_MODEL  directories, model-zoo names, EasyNLP names (bert-large-uncased,
#                  bert-small-uncased, ...) or Hugging Face Hub ids (default: the shared minilm-l6 / minilm-l3)
#   DATA     folder with GLUE MRPC train.tsv and dev.tsv (with header) (default: ../shared/data/glue-mrpc)
#   ROWS, DEV_ROWS, WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/minilm-l6}"
STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/minilm-l3}"
DATA="${DATA:-$SHARED/data/glue-mrpc}"
WORK="${WORK:-$REPO/examples-out/kd_mrpc}"
EPOCHS="${EPOCHS:-1}"
mkdir -p "$WORK" && cd "$WORK"
slice_table "$DATA/train.tsv" train.tsv "${ROWS:-}"
slice_table "$DATA/dev.tsv" dev.tsv "${DEV_ROWS:-}"

WORKER_COUNT=1
WORKER_GPU=1
TEACHER_CKPT=results/large-sst2-teacher
STUDENT_CKPT=results/small-sst2-student
LOGITS_PATH=results/large-sst2-teacher

echo '=========[ Finetune the teacher model ]========='
easynlp \
     --app_name=text_match \
     --mode=train \
     --worker_count=${WORKER_COUNT} \
     --worker_gpu=${WORKER_GPU} \
     --tables=train.tsv,dev.tsv \
     --input_schema=label:str:1,id:str:1,id2:str:1,sent1:str:1,sent2:str:1 \
     --first_sequence=sent1 \
     --second_sequence=sent2 \
     --label_name=label \
     --label_enumerate_values=0,1 \
     --checkpoint_dir=${TEACHER_CKPT} \
     --learning_rate=3e-5 \
     --epoch_num=${EPOCHS} \
     --random_seed=42 \
     --save_checkpoint_steps=100 \
     --sequence_length=128 \
     --micro_batch_size=32 \
     --user_defined_parameters="pretrain_model_name_or_path=${TEACHER_MODEL}"

echo '=========[ Save the teacher logits ]========='
 easynlp \
     --mode=predict \
     --worker_count=${WORKER_COUNT} \
     --worker_gpu=${WORKER_GPU} \
     --tables=train.tsv \
     --outputs=${LOGITS_PATH}/pred.tsv \
     --input_schema=label:str:1,id:str:1,id2:str:1,sent1:str:1,sent2:str:1 \
     --output_schema=logits \
     --first_sequence=sent1 \
     --second_sequence=sent2 \
     --checkpoint_path=${TEACHER_CKPT} \
     --micro_batch_size=32 \
     --sequence_length=128 \
     --app_name=text_match

echo '=========[ Finetune the student model w/ KD ]========='
easynlp \
    --app_name=text_match \
    --mode=train \
    --worker_count=${WORKER_COUNT} \
    --worker_gpu=${WORKER_GPU} \
    --tables=train.tsv,dev.tsv \
    --input_schema=label:str:1,id:str:1,id2:str:1,sent1:str:1,sent2:str:1,logits:float:2 \
    --first_sequence=sent1 \
    --second_sequence=sent2 \
    --label_name=label \
    --label_enumerate_values=0,1 \
    --checkpoint_dir=${STUDENT_CKPT} \
    --learning_rate=3e-5 \
    --epoch_num=${EPOCHS} \
    --random_seed=42 \
    --save_checkpoint_steps=200 \
    --sequence_length=128 \
    --micro_batch_size=32 \
    --user_defined_parameters="
        pretrain_model_name_or_path=${STUDENT_MODEL}
        enable_distillation=True
        type=vanilla_kd
        logits_name=logits
        logits_saved_path=${LOGITS_PATH}/pred.tsv
        temperature=5
        alpha=0.2
    "

echo '=========[ Test the trained student model ]========='
easynlp \
    --mode=predict \
    --worker_count=${WORKER_COUNT} \
    --worker_gpu=${WORKER_GPU} \
    --tables=train.tsv \
    --outputs=student_pred.tsv \
    --input_schema=label:str:1,id:str:1,id2:str:1,sent1:str:1,sent2:str:1 \
    --output_schema=predictions,probabilities,logits \
    --first_sequence=sent1 \
    --second_sequence=sent2 \
    --checkpoint_path=${STUDENT_CKPT} \
    --micro_batch_size=32 \
    --sequence_length=128 \
    --app_name=text_match

easynlp --mode=evaluate --app_name=text_match --worker_gpu=1 --tables=dev.tsv \
    --input_schema=label:str:1,id:str:1,id2:str:1,sent1:str:1,sent2:str:1 \
    --first_sequence=sent1 --second_sequence=sent2 --label_name=label \
    --checkpoint_path=${STUDENT_CKPT} --micro_batch_size=32 --sequence_length=128 \
    --outputs=student_metrics.json
echo "student predictions: $WORK/student_pred.tsv, metrics: $WORK/student_metrics.json"
