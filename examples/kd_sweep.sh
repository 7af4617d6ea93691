#!/usr/bin/env bash
# When does vanilla KD help? A sweep on SST-2: teacher minilm-l6 fine-tuned on the full training
# set, student minilm-l3 without KD and with vanilla KD over temperature x alpha (same epochs, lr and
# seed), the no-KD student and the best KD cell repeated over more seeds; in two settings: the
# student trained on the full training set, and on its first SMALL_ROWS rows (the same full-data
# teacher). Each setting ends with `--mode=report` (curves, confusion matrices and the heatmap of
# best dev accuracy by temperature and alpha) in $WORK/reports/<setting>/.
#
# Resumable: a finished run (its `done` marker) is skipped; an interrupted one continues from its
# latest state (--resume_from_checkpoint). Every command's log is kept in $WORK/logs/ (appended).
#   TEACHER_MODEL / STUDENT_MODEL  model-zoo names or directories (default: the shared minilm-l6 / minilm-l3)
#   DATA          folder with GLUE SST-2 train.tsv and dev.tsv (with header) (default: ../shared/data/glue-sst2)
#   ROWS          training rows of the full setting (default: all 67,349)
#   SMALL_ROWS    training rows of the small setting (default: 8000; empty: no small setting)
#   DEV_ROWS      validation rows (default: all 872)
#   TEMPERATURES  (default "1 2 5 10"), ALPHAS (default "0.2 0.5 0.9")
#   SEEDS         seeds of the no-KD student and of the best cell; the first one trains every cell
#                 (default "1 2 3")
#   SETTINGS      the settings to run, in order (default "full small")
#   FULL_CELLS    `grid` (default): the full setting sweeps the whole grid; `best-small`: it trains
#                 only the no-KD student and the small setting's best cell (run small first:
#                 SETTINGS="small full"), for machines where the full grid takes too long
#   FULL_SEEDS    seeds of the full setting (default: SEEDS)
#   TEACHER_EPOCHS (default 2), EPOCHS (student, default 2), LR (default 3e-5), BATCH (default 32),
#   SEQ_LEN (default 64), SAVE_STEPS (evaluate every N steps, default 500), LOGGING_STEPS (default 100)
#   JOBS          students trained at once, each with cores/JOBS threads (default 1: one at a time
#                 on all cores); two single-threaded runs side by side train faster on 2 cores
#   WORK, EASYNLP: see examples/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/minilm-l6}"
STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/minilm-l3}"
DATA="${DATA:-$SHARED/data/glue-sst2}"
WORK="${WORK:-$REPO/examples-out/kd_sweep}"
SMALL_ROWS="${SMALL_ROWS-8000}"
TEMPERATURES="${TEMPERATURES:-1 2 5 10}"
ALPHAS="${ALPHAS:-0.2 0.5 0.9}"
SEEDS="${SEEDS:-1 2 3}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-2}"
EPOCHS="${EPOCHS:-2}"
LR="${LR:-3e-5}"
BATCH="${BATCH:-32}"
SEQ_LEN="${SEQ_LEN:-64}"
SAVE_STEPS="${SAVE_STEPS:-500}"
LOGGING_STEPS="${LOGGING_STEPS:-100}"
SETTINGS="${SETTINGS:-full small}"
FULL_CELLS="${FULL_CELLS:-grid}"
FULL_SEEDS="${FULL_SEEDS:-$SEEDS}"
JOBS="${JOBS:-1}"
case "$FULL_CELLS" in
    grid | best-small) ;;
    *) echo "FULL_CELLS=$FULL_CELLS: use grid or best-small" >&2; exit 2 ;;
esac
mkdir -p "$WORK/logs" "$WORK/runs" "$WORK/reports" && cd "$WORK"
slice_table "$DATA/train.tsv" train_full.tsv "${ROWS:-}"
slice_table "$DATA/dev.tsv" dev.tsv "${DEV_ROWS:-}"
SETTING_LIST=()
for setting in $SETTINGS; do
    case "$setting" in
        full) SETTING_LIST+=(full) ;;
        small) if [[ -n "$SMALL_ROWS" ]]; then SETTING_LIST+=(small); fi ;;
        *) echo "SETTINGS: unknown setting \`$setting\` (full, small)" >&2; exit 2 ;;
    esac
done
if [[ -n "$SMALL_ROWS" ]]; then
    head -n "$SMALL_ROWS" train_full.tsv > train_small.tsv
fi
COMMON=(--app_name=text_classify --worker_gpu=1 --first_sequence=sent --label_name=label
    --label_enumerate_values=0,1 --sequence_length="$SEQ_LEN" --micro_batch_size="$BATCH")
TRAIN=("${COMMON[@]}" --mode=train --learning_rate="$LR" --save_checkpoint_steps="$SAVE_STEPS"
    --logging_steps="$LOGGING_STEPS")

# train NAME LOG ARGS...: one training run into runs/NAME, skipped when done, resumed when stopped.
train() {
    local name="$1" log="logs/$2.log"
    shift 2
    local dir="runs/$name"
    if [[ -f "$dir/done" ]]; then
        echo "skip $name (done)"
        return
    fi
    local resume=()
    if [[ -f "$dir/latest/trainer_state.json" ]]; then
        resume=(--resume_from_checkpoint="$dir")
        echo "resume $name"
    else
        echo "train $name"
    fi
    easynlp "${TRAIN[@]}" --checkpoint_dir="$dir" "$@" "${resume[@]}" 2>> "$log"
    touch "$dir/done"
}

# spawn CMD...: CMD in the background once fewer than JOBS are running (in the foreground when
# JOBS is 1); a failed job stops the sweep at the next spawn or join.
spawn() {
    if ((JOBS <= 1)); then
        "$@"
        return
    fi
    while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
    "$@" &
}

# join: wait for every spawned job, failing when one failed.
join() {
    local pid
    for pid in $(jobs -p); do wait "$pid"; done
}

# best_accuracy NAME: the best dev accuracy a finished run logged.
best_accuracy() {
    grep -o 'best validation accuracy [0-9.]*' "logs/$1.log" | tail -n 1 | awk '{print $4}'
}

echo '=========[ Teacher: minilm-l6 on the full training set ]========='
train teacher teacher --tables=train_full.tsv,dev.tsv --input_schema=sent:str:1,label:str:1 \
    --epoch_num="$TEACHER_EPOCHS" --random_seed=42 \
    --user_defined_parameters="pretrain_model_name_or_path=${TEACHER_MODEL}"

# student NAME SEED [KD KEYS...]: a minilm-l3 student of $setting (KD when keys are given),
# spawned (see JOBS).
student() {
    local name="$1" seed="$2"
    shift 2
    local schema=sent:str:1,label:str:1 udp="pretrain_model_name_or_path=${STUDENT_MODEL}" threads=()
    if [[ $# -gt 0 ]]; then
        schema="$schema,logits:float:2"
        udp="$udp enable_distillation=True type=vanilla_kd logits_name=logits logits_saved_path=$logits $*"
    fi
    if ((JOBS > 1)); then
        threads=(--data_threads="$(($(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1))")
    fi
    RUNS+=("runs/$setting/$name")
    spawn train "$setting/$name" "$setting-$name" --tables="train_${setting}.tsv,dev.tsv" \
        --input_schema="$schema" --epoch_num="$EPOCHS" --random_seed="$seed" \
        --user_defined_parameters="$udp" "${threads[@]}"
}

declare -A BEST_CELL
for setting in "${SETTING_LIST[@]}"; do
    logits="teacher_logits_${setting}.tsv"
    if [[ ! -f "$logits" ]]; then
        echo "teacher logits on train_${setting}.tsv"
        easynlp "${COMMON[@]}" --mode=predict --tables="train_${setting}.tsv" --outputs="$logits" \
            --input_schema=sent:str:1,label:str:1 --output_schema=logits --checkpoint_path=runs/teacher \
            2>> logs/teacher.log
    fi
    echo "=========[ Students on train_${setting}.tsv ($(wc -l < "train_${setting}.tsv") rows) ]========="
    seeds="$SEEDS"
    if [[ "$setting" == full ]]; then seeds="$FULL_SEEDS"; fi
    read -r -a seed_list <<< "$seeds"
    first="${seed_list[0]}"
    RUNS=()
    for seed in "${seed_list[@]}"; do
        student "nokd-s$seed" "$seed"
    done
    if [[ "$setting" == full && "$FULL_CELLS" == best-small ]]; then
        if [[ -z "${BEST_CELL[small]:-}" ]]; then
            echo "FULL_CELLS=best-small: the small setting must run first (SETTINGS=\"small full\")" >&2
            exit 2
        fi
        read -r bt ba <<< "${BEST_CELL[small]}"
        echo "the small setting's best cell: temperature=$bt alpha=$ba"
        for seed in "${seed_list[@]}"; do
            student "kd-t$bt-a$ba-s$seed" "$seed" "temperature=$bt" "alpha=$ba"
        done
    else
        for t in $TEMPERATURES; do
            for a in $ALPHAS; do
                student "kd-t$t-a$a-s$first" "$first" "temperature=$t" "alpha=$a"
            done
        done
        join
        best="" best_acc=-1
        for t in $TEMPERATURES; do
            for a in $ALPHAS; do
                acc="$(best_accuracy "$setting-kd-t$t-a$a-s$first")"
                if awk -v x="$acc" -v y="$best_acc" 'BEGIN { exit !(x > y) }'; then
                    best="$t $a" best_acc="$acc"
                fi
            done
        done
        read -r bt ba <<< "$best"
        echo "best cell on seed $first: temperature=$bt alpha=$ba ($best_acc); more seeds"
        for seed in "${seed_list[@]:1}"; do
            student "kd-t$bt-a$ba-s$seed" "$seed" "temperature=$bt" "alpha=$ba"
        done
    fi
    join
    BEST_CELL[$setting]="$bt $ba"
    list="$(IFS=,; echo "${RUNS[*]}")"
    easynlp --mode=report --checkpoint_dir="$list" --outputs="reports/$setting" 2>> "logs/report-$setting.log"
    echo "report: $WORK/reports/$setting/report.md (.svg, .png)"
done
