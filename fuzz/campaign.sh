#!/usr/bin/env bash
# A fuzzing campaign: every target in turn (over JOBS workers, default 1) for MINUTES each (default 10) or until it has run
# RUNS inputs (default 10,000,000, issue 21's goal), whichever comes first, keeping what it finds
# in fuzz/corpus/<target>/, then the table of the run (target, executions, coverage, crashes)
# written into RELIABILITY.md between its "fuzz campaign" markers. A crash stops nothing: the
# next target runs, the crash input stays in fuzz/artifacts/<target>/, and the script exits 1.
# Usage: [RUNS=N] [JOBS=N] [SANITIZER=none|address] fuzz/campaign.sh [MINUTES] [TARGET...]   (run from anywhere; needs nightly, like smoke.sh)
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
# JOBS libFuzzer processes per target (default 1), sharing the target's corpus directory (each
# reloads what the others find) and each running RUNS/JOBS inputs: executions are summed, so on
# a machine with N cores JOBS=N reaches RUNS N times sooner; targets still run one after another.
JOBS="${JOBS:-1}"
case "$JOBS" in
  ''|*[!0-9]*|0) echo "campaign.sh: JOBS must be a positive whole number, got '$JOBS'" >&2; exit 2 ;;
esac
# The campaign builds without AddressSanitizer by default (SANITIZER=address to keep it): this
# crate forbids unsafe code, so ASan can only find memory errors inside dependencies, and on the
# `config` target it cost 7x the executions per second (193/s against 1,318/s, 2026-12-07). The
# short runs of fuzz/smoke.sh (and so CI) keep ASan.
SANITIZER="${SANITIZER:-none}"
per_job=$(( (RUNS + JOBS - 1) / JOBS ))
# The commit the run began on: a target built after a commit made meanwhile fuzzes that one.
first_commit=$(git rev-parse --short HEAD)

# One target: JOBS workers, each with its own log $LOGS/<target>.<n>.log, then one line
# "took failures" in $LOGS/<target>.done.
fuzz_one() {
  local target=$1 started n failures=0
  started=$(date +%s)
  for n in $(seq 1 "$JOBS"); do
    cargo +nightly fuzz run -s "$SANITIZER" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time=$((MINUTES * 60)) -runs="$per_job" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$LOGS/$target.$n.log" 2>&1 &
  done
  for n in $(seq 1 "$JOBS"); do
    wait -n || failures=$((failures + 1))
  done
  echo "$(( $(date +%s) - started )) $failures" >"$LOGS/$target.done"
}

# Each target is built once, before anything runs, so a build error stops the campaign early.
for target in "${TARGETS[@]}"; do cargo +nightly fuzz build -s "$SANITIZER" "$target" >&2 || exit 1; done
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  echo "== $target: ${MINUTES} min or ${RUNS} runs over ${JOBS} workers ($(date -u +%H:%M:%S))" >&2
  fuzz_one "$target"
done

failed=0
last_commit=$(git rev-parse --short HEAD)
if [ "$last_commit" = "$first_commit" ]; then commits="$last_commit"; else commits="$first_commit..$last_commit"; fi
run="$(date -u +%Y-%m-%d), $commits, ${JOBS} workers, $SANITIZER, cap ${RUNS} runs or ${MINUTES} min"
rows=""
for target in "${TARGETS[@]}"; do
  read -r took status <"$LOGS/$target.done"
  # Executions: the sum over the workers; coverage: the most any worker saw.
  execs=$(cat "$LOGS/$target".*.log | grep -o 'stat::number_of_executed_units: *[0-9]*' | grep -o '[0-9]*$' | awk '{s+=$1} END {print s}')
  cov=$(cat "$LOGS/$target".*.log | grep -oE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE).*cov: [0-9]+' | grep -oE 'cov: [0-9]+' | grep -o '[0-9]*' | sort -n | tail -1)
  corpus=$(ls "fuzz/corpus/$target" | wc -l)
  if [ "$status" -eq 0 ]; then crashes=0; else crashes=$status; failed=1; tail -30 "$LOGS/$target".*.log >&2; fi
  printf '%s: %s executions, coverage %s, %s crashes\n' "$target" "${execs:-?}" "${cov:-?}" "$crashes" >&2
  rows+="| \`$target\` | $run | $((took / 60)) min $((took % 60)) s | ${execs:-?} | ${cov:-?} | ${corpus} | ${crashes} |"$'\n'
done

# The table keeps one row per target: a run replaces the rows of the targets it ran and leaves
# the others as their last run wrote them (each row names its run), so fuzzing one target again
# never erases what the others recorded.
python3 - "$rows" "$(nproc)" "$(rustc +nightly --version | cut -d' ' -f1-2)" <<'PY'
import sys, re
new_rows, cpus, rustc = sys.argv[1:4]
path = "RELIABILITY.md"
text = open(path).read()
start, end = "<!-- fuzz campaign:", "<!-- end fuzz campaign -->"
header = "| target | run (date, commit, workers, sanitizer, cap) | time | executions | coverage (edges) | corpus files | crashes |"
rows = {}
if start in text:
    a = text.index(start)
    b = text.index(end) + len(end)
    old = text[a:b]
    cells = [l for l in old.splitlines() if l.startswith("| `")]
    for line in cells:
        target = line.split("`")[1]
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(parts) == 6:
            # A row of the older layout: its run was named once, above the table.
            m = re.search(r"on (\d{4}-\d{2}-\d{2}), commits? ([0-9a-f]+(?: to [0-9a-f]+)?)", old)
            w = re.search(r"JOBS=(\d+)", old)
            s = re.search(r"sanitizer: (\w+)", old)
            cap = re.search(r"until (\d+) runs over \d+ workers or (\d+) min", old)
            run = ", ".join([m.group(1) if m else "?", m.group(2).replace(" to ", "..") if m else "?",
                             f"{w.group(1) if w else 1} workers", s.group(1) if s else "?",
                             f"cap {cap.group(1)} runs or {cap.group(2)} min" if cap else "cap ?"])
            parts.insert(1, run)
        rows[target] = "| " + " | ".join(parts) + " |"
else:
    a = b = None
for line in new_rows.splitlines():
    if line.startswith("| `"):
        rows[line.split("`")[1]] = line
table = (
    "<!-- fuzz campaign: written by fuzz/campaign.sh; do not edit by hand -->\n"
    "Each row is the last campaign run of its target. `RUNS=R JOBS=N bash fuzz/campaign.sh MINUTES [TARGET...]` "
    "runs each target until R inputs over N workers or MINUTES, whichever comes first; the row names the run's "
    f"date, commit, workers, sanitizer and cap. Latest run on {cpus} CPUs with {rustc}.\n\n"
    + header + "\n|---|---|---|---|---|---|---|\n"
    + "".join(rows[t] + "\n" for t in sorted(rows))
    + end
)
if a is None:
    text = text.rstrip() + "\n\n## Fuzzing\n\n" + table + "\n"
else:
    text = text[:a] + table + text[b:]
open(path, "w").write(text)
PY
exit "$failed"
