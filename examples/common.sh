# Shared set-up for the example scripts (sourced, not run).
#   EASYNLP      the easynlp binary (default: the release build of this repository, built if missing)
#   WORK         working folder for tables, checkpoints and predictions (default: ./examples-out/<script>)
#   ROWS         training rows taken from the data set (default: all)
#   DEV_ROWS     validation rows taken (default: all)
#   EASYNLP_EXTRA_FLAGS  flags added to every easynlp command (e.g. `--use_amp`)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${EASYNLP_SHARED:-$REPO/../shared}"
if [[ -z "${EASYNLP:-}" ]]; then
    if [[ ! -x "$REPO/target/release/easynlp" ]]; then
        (cd "$REPO" && cargo build --release)
    fi
    EASYNLP="$REPO/target/release/easynlp"
fi
# The tutorials call `easynlp`: make the name resolve to this binary.
# shellcheck disable=SC2086
easynlp() { "$EASYNLP" "$@" ${EASYNLP_EXTRA_FLAGS:-}; }

# slice_table SRC DST ROWS: copy SRC without its header line, keeping the first ROWS data rows
# (all when ROWS is empty), as the headerless tables of EasyNLP's tutorials.
slice_table() {
    if [[ -n "$3" ]]; then
        sed -n "2,$(($3 + 1))p" "$1" > "$2"
    else
        sed -n '2,$p' "$1" > "$2"
    fi
}
