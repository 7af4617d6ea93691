#!/usr/bin/env bash
# The whole Meta-KD pipeline of EasyNLP's run_meta_kd.sh: data preparation
# (examples/metakd_prep.sh), the meta-teacher (examples/metakd_teacher.sh), then both student stages
# and the evaluation for every genre (examples/metakd_students.sh), and a per-genre summary.
#
#   GENRES           domains to distil students for (default: books,dvd,electronics,kitchen)
#   ROWS_PER_DOMAIN  keep only the first N rows of each domain in each split (default: all)
#   TEACHER_MODEL / STUDENT_MODEL, TEACHER_EPOCHS, EPOCHS1, EPOCHS2, SEQ_LEN, BATCH, LR:
#                    passed to the teacher and student scripts (see them for defaults)
#   WORK             root folder; each step writes a subfolder (default: ./examples-out/metakd)
#   EASYNLP, DATA, MODEL, DOMAINS, SEED: see the step scripts
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-$REPO/examples-out/metakd}"
GENRES="${GENRES:-books,dvd,electronics,kitchen}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export EASYNLP

WORK="$WORK/prep" bash "$HERE/metakd_prep.sh"
SENTI="$WORK/prep/data/SENTI"
EPOCHS="${TEACHER_EPOCHS:-1}" SENTI="$SENTI" WORK="$WORK/teacher" bash "$HERE/metakd_teacher.sh"
TEACHER="$WORK/teacher/tmp/meta_teacher"
IFS=',' read -r -a genres <<< "$GENRES"
for genre in "${genres[@]}"; do
    GENRE="$genre" SENTI="$SENTI" TEACHER="$TEACHER" WORK="$WORK/students/$genre" bash "$HERE/metakd_students.sh"
done
echo "=========[ Meta-KD students, test accuracy per genre ]========="
for genre in "${genres[@]}"; do
    metrics="$WORK/students/$genre/student.test.$genre.json"
    echo "$genre: accuracy $(sed -n 's/.*"accuracy": \([0-9.]*\).*/\1/p' "$metrics" | head -n 1)  ($metrics)"
done
