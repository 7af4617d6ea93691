#!/usr/bin/env bash
# The README's Meta-KD results table: on the tables of examples/metakd_prep.sh, for every domain,
#   1. the student fine-tuned on its domain alone,
#   2. the meta-teacher (all domains, EasyNLP's tutorial command) and the Meta-KD student
#      (stage first, then stage second, from the meta-teacher),
#   3. a teacher fine-tuned on the domain alone and the student distilled from it by vanilla KD
#      (logits exported with --mode=predict, then temperature/alpha KD),
# each evaluated on the domain's test rows; then one table of test accuracy per domain and average.
# Every step is skipped when its checkpoint is complete, so an interrupted run resumes.
#
#   SENTI          folder with train_with_weights.tsv, dev_standard.tsv, test_standard.tsv
#                  (default: the output of examples/metakd_prep.sh)
#   TEACHER_MODEL / STUDENT_MODEL  (default: the shared minilm-l6 / minilm-l3)
#   GENRES         domains (default: books dvd electronics kitchen)
#   STUDENT_EPOCHS epochs of every student on its domain, Meta-KD stage second included (default 3)
#   STAGE1_EPOCHS  Meta-KD stage first (default 1); META_EPOCHS meta-teacher (default 2);
#   TEACHER_EPOCHS per-domain teachers (default 2); T, ALPHA vanilla KD (default 2, 0.5)
#   SEQ_LEN, BATCH, LR (default 128, 16, 3e-5); WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SENTI="$(cd "${SENTI:-$REPO/examples-out/metakd_prep/data/SENTI}" && pwd)"
TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/minilm-l6}"
STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/minilm-l3}"
GENRES="${GENRES:-books dvd electronics kitchen}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-3}"
STAGE1_EPOCHS="${STAGE1_EPOCHS:-1}"
META_EPOCHS="${META_EPOCHS:-2}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-2}"
T="${T:-2}"
ALPHA="${ALPHA:-0.5}"
SEQ_LEN="${SEQ_LEN:-128}"
BATCH="${BATCH:-16}"
LR="${LR:-3e-5}"
WORK="${WORK:-$REPO/examples-out/metakd_results}"
for m in TEACHER_MODEL STUDENT_MODEL; do
    if [[ -d "${!m}" ]]; then printf -v "$m" '%s' "$(cd "${!m}" && pwd)"; fi
done
mkdir -p "$WORK" && cd "$WORK"
SCHEMA=guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1
common=(--app_name=text_classify --first_sequence=text_a --second_sequence=text_b --label_name=label
    --sequence_length=$SEQ_LEN --micro_batch_size=$BATCH)

# The rows of one domain, header kept, for the per-domain runs.
for d in $GENRES; do
    for split in train_with_weights dev_standard; do
        awk -F'\t' -v d="$d" 'NR == 1 || $5 == d' "$SENTI/$split.tsv" > "$split.$d.tsv"
    done
done

# train CKPT MODEL EPOCHS TRAIN_TABLE DEV_TABLE UDP [SCHEMA]
train() {
    [[ -f "$1.done" ]] && return 0
    echo "=========[ train $1 ]========="
    easynlp --mode=train "${common[@]}" --input_schema="${7:-$SCHEMA}" --tables="$4,$5" \
        --label_enumerate_values=positive,negative --checkpoint_dir="$1" --learning_rate=$LR \
        --epoch_num="$3" --random_seed=42 --logging_steps=20 --save_checkpoint_steps=50 \
        --user_defined_parameters="pretrain_model_name_or_path=$2 $6"
    touch "$1.done"
}

# evaluate CKPT GENRE: test accuracy of CKPT on GENRE into CKPT.test.GENRE.json
evaluate() {
    easynlp --mode=evaluate "${common[@]}" --input_schema=$SCHEMA --tables="$SENTI/test_standard.tsv" \
        --checkpoint_dir="$1" --outputs="$1.test.$2.json" --user_defined_parameters="genre=$2" > /dev/null
}

for d in $GENRES; do
    train "alone/$d" "$STUDENT_MODEL" $STUDENT_EPOCHS "train_with_weights.$d.tsv" "dev_standard.$d.tsv" ""
    evaluate "alone/$d" "$d"
done
train meta/teacher "$TEACHER_MODEL" $META_EPOCHS "$SENTI/train_with_weights.tsv" "$SENTI/dev_standard.tsv" \
    "use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5"
for d in $GENRES; do
    evaluate meta/teacher "$d"
    teacher="teacher_model_path=$WORK/meta/teacher domain_loss_weight=0.5 genre=$d T=$T"
    train "meta/$d-stage1" "$STUDENT_MODEL" $STAGE1_EPOCHS "$SENTI/train_with_weights.tsv" \
        "$SENTI/dev_standard.tsv" "$teacher distill_stage=first"
    train "meta/$d-stage2" "$WORK/meta/$d-stage1" $STUDENT_EPOCHS "$SENTI/train_with_weights.tsv" \
        "$SENTI/dev_standard.tsv" "$teacher distill_stage=second"
    evaluate "meta/$d-stage2" "$d"
done
for d in $GENRES; do
    train "domain_teacher/$d" "$TEACHER_MODEL" $TEACHER_EPOCHS "train_with_weights.$d.tsv" "dev_standard.$d.tsv" ""
    evaluate "domain_teacher/$d" "$d"
    if [[ ! -f "vkd/$d.logits.tsv" ]]; then
        mkdir -p vkd
        easynlp --mode=predict "${common[@]}" --input_schema=$SCHEMA --tables="train_with_weights.$d.tsv" \
            --checkpoint_dir="domain_teacher/$d" --output_schema=logits --outputs="vkd/$d.logits.tsv"
    fi
    train "vkd/$d" "$STUDENT_MODEL" $STUDENT_EPOCHS "train_with_weights.$d.tsv" "dev_standard.$d.tsv" \
        "enable_distillation=True type=vanilla_kd logits_name=logits logits_saved_path=$WORK/vkd/$d.logits.tsv temperature=$T alpha=$ALPHA" \
        "$SCHEMA,logits:float:2"
    evaluate "vkd/$d" "$d"
done

accuracy() { sed -n 's/.*"accuracy": \([0-9.]*\).*/\1/p' "$1" | head -n 1; }
echo "=========[ test accuracy per domain ]========="
printf '| model |'; for d in $GENRES; do printf ' %s |' "$d"; done; echo ' average |'
printf '|---|'; for d in $GENRES; do printf -- '---|'; done; echo '---|'
for row in "meta/teacher|meta-teacher" "domain_teacher/%s|teacher on its domain alone" \
    "alone/%s|student on its domain alone" "vkd/%s|student, vanilla KD (T=$T, alpha=$ALPHA)" \
    "meta/%s-stage2|student, Meta-KD"; do
    pattern="${row%%|*}"
    printf '| %s |' "${row#*|}"
    sum=0
    for d in $GENRES; do
        a="$(accuracy "${pattern//%s/$d}.test.$d.json")"
        printf ' %.3f |' "$a"
        sum="$(awk -v s="$sum" -v a="$a" 'BEGIN { print s + a }')"
    done
    awk -v s="$sum" -v n="$(wc -w <<< "$GENRES")" 'BEGIN { printf " %.4f |\n", s / n }'
done
