#!/bin/bash
# Profiles mllp-guard and nginx stream workers during scenario 1 of benches/compare.rs
# (plain 1 KiB x 64). Usage: benches/profile_guard.sh perf|strace, after
# `cargo bench --bench compare --no-run`. Needs perf (linux-perf) or strace; writes to /tmp:
# perf_guard.data, perf_nginx.data (perf report -i ... --no-children --sort symbol -g none)
# or perf_strace_guard.txt, perf_strace_nginx.txt.
cd "$(dirname "$0")/.."
BIN=$(ls -t target/release/deps/compare-* | grep -v "\.d$" | head -1)
MODE=$1   # perf or strace
$BIN --bench --scenarios 1 --runs 1 --seconds 6 --no-write > /tmp/perf_prof_run_$MODE.log 2>&1 &
RUNPID=$!
for i in $(seq 200); do G=$(pgrep -f "guard-plain.yaml" | head -1); N=$(pgrep -f "nginx-plain.conf" | head -1); [ -n "$G" ] && [ -n "$N" ] && break; sleep 0.1; done
sleep 0.3
W=$(pgrep -P $N | tr '\n' ',' | sed 's/,$//')
echo "guard $G nginx master $N workers $W"
if [ "$MODE" = perf ]; then
  perf record -e cpu-clock -F 999 -g -o /tmp/perf_guard.data -p $G > /dev/null 2>&1 &
  P1=$!
  perf record -e cpu-clock -F 999 -g -o /tmp/perf_nginx.data -p $W > /dev/null 2>&1 &
  P2=$!
else
  strace -c -f -o /tmp/perf_strace_guard.txt -p $G &
  P1=$!
  strace -c -f -o /tmp/perf_strace_nginx.txt -p $W &
  P2=$!
fi
wait $RUNPID
sleep 1
kill -INT $P1 $P2 2>/dev/null
wait $P1 $P2 2>/dev/null
grep "run 0" /tmp/perf_prof_run_$MODE.log
