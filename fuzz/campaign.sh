#!/usr/bin/env bash
# A fuzzing campaign: every target in turn for MINUTES each (default 10) or until it has run
# RUNS inputs (default 10,000,000, issue 21's goal), whichever comes first, keeping what it finds
# in fuzz/corpus/<target>/, then the table of the run (target, executions, coverage, crashes)
# written into RELIABILITY.md between its "fuzz campaign" markers. A crash stops nothing: the
# next target runs, the crash input stays in fuzz/artifacts/<target>/, and the script exits 1.
# Usage: fuzz/campaign.sh [MINUTES] [TARGET...]   (run from anywhere; needs nightly, like smoke.sh)
set -uo pipefail

MINUTES="${1:-10}"
RUNS="${RUNS:-10000000}"
case "$MINUTES" in
  ''|*[!0-9]*) echo "campaign.sh: MINUTES must be a whole number, got '$MINUTES'" >&2; exit 2 ;;
esac
shift || true
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$FUZZ_DIR/.."
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cd "$FUZZ_DIR/fuzz_targets" && ls *.rs | sed 's/\.rs$//')
fi
cd "$ROOT"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
failed=0
rows=""
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  echo "== $target: ${MINUTES} min or ${RUNS} runs" >&2
  started=$(date +%s)
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time=$((MINUTES * 60)) -runs="$RUNS" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$LOGS/$target.log" 2>&1
  status=$?
  took=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$target.log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -oE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE).*cov: [0-9]+' "$LOGS/$target.log" | grep -oE 'cov: [0-9]+' | tail -1 | grep -o '[0-9]*')
  corpus=$(ls "fuzz/corpus/$target" | wc -l)
  if [ "$status" -eq 0 ]; then crashes=0; else crashes=1; failed=1; tail -30 "$LOGS/$target.log" >&2; fi
  printf '%s: %s executions, coverage %s, %s crashes\n' "$target" "${execs:-?}" "${cov:-?}" "$crashes" >&2
  rows+="| \`$target\` | $((took / 60)) min $((took % 60)) s | ${execs:-?} | ${cov:-?} | ${corpus} | ${crashes} |"$'\n'
done

table="<!-- fuzz campaign: written by fuzz/campaign.sh; do not edit by hand -->
Run \`RUNS=$RUNS bash fuzz/campaign.sh $MINUTES\` (each target until $RUNS runs or $MINUTES min) on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) CPUs, $(rustc +nightly --version | cut -d' ' -f1-2):

| target | time | executions | coverage (edges) | corpus files | crashes |
|---|---|---|---|---|---|
${rows}<!-- end fuzz campaign -->"
python3 - "$table" <<'PY'
import sys, re
table = sys.argv[1]
path = "RELIABILITY.md"
text = open(path).read()
start, end = "<!-- fuzz campaign:", "<!-- end fuzz campaign -->"
if start in text:
    a = text.index(start)
    b = text.index(end) + len(end)
    text = text[:a] + table + text[b:]
else:
    text = text.rstrip() + "\n\n## Fuzzing\n\n" + table + "\n"
open(path, "w").write(text)
PY
exit "$failed"
