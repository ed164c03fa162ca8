#!/usr/bin/env bash
# User-space instructions per message of the guard, the measure BENCHMARKS.md's CPU work uses
# because it is stable on a shared, noisy machine: valgrind's callgrind on `mllp-guard run`
# (current-thread runtime) relaying N messages of SIZE bytes from one connection, one in flight,
# into `mllp-guard sink`, minus a run relaying one message (start-up and shut-down).
#
# Usage: benches/callgrind_guard.sh [N] [LEVEL] [SIZE]
#   N      messages (default 20000)
#   LEVEL  `shipped` (the default level: an audit line per message, to a file),
#          `audit-file` (shipped plus `audit: { file }`: the audit trail as JSON lines to its
#          own file) or an MLLP_GUARD_LOG value such as `warn` (default shipped)
#   SIZE   bytes per message (default 1024)
# Needs valgrind and a release build (`cargo build --release`). Writes its profiles to
# $OUT (default /tmp/callgrind-guard): `callgrind_annotate --inclusive=yes FILE` shows where
# the instructions go (divide by N). Loopback only, ports 27600/27601 (PORT_BASE to change).
set -euo pipefail
N="${1:-20000}"
LEVEL="${2:-shipped}"
SIZE="${3:-1024}"
cd "$(dirname "$0")/.."
BIN="$PWD/target/release/mllp-guard"
OUT="${OUT:-/tmp/callgrind-guard}"
PORT_BASE="${PORT_BASE:-27600}"
LISTEN=$PORT_BASE
UPSTREAM=$((PORT_BASE + 1))
[ -x "$BIN" ] || { echo "callgrind_guard.sh: build first: cargo build --release" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind_guard.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
mkdir -p "$OUT"
AUDIT=""
[ "$LEVEL" = audit-file ] && AUDIT="audit: { file: $OUT/audit.jsonl }"
cat >"$OUT/guard.yaml" <<YAML
$AUDIT
routes:
  - name: bench
    listen: 127.0.0.1:$LISTEN
    allow: [127.0.0.1]
    upstream:
      address: 127.0.0.1:$UPSTREAM
YAML

# One connection, one message in flight; every ack must be a positive one for its message.
cat >"$OUT/send.py" <<'PY'
import socket, sys
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
head = "MSH|^~\\&|A|B|C|D|20260101000000||ADT^A01|{id}|P|2.5\rPID|1||123||DOE^JOHN\r"
s = socket.create_connection(("127.0.0.1", port))
for i in range(n):
    control_id = f"M{i:08d}"
    msg = (head.format(id=control_id) + "NTE|1||" + "x" * size + "\r")[:size]
    s.sendall(b"\x0b" + msg.encode() + b"\x1c\x0d")
    ack = b""
    while not ack.endswith(b"\x1c\x0d"):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"the guard closed the connection at message {i}")
        ack += chunk
    if b"MSA|AA|" + control_id.encode() not in ack:
        sys.exit(f"message {i}: not a positive ack for it: {ack[:120]!r}")
s.close()
PY

# Instructions of one guard run relaying $1 messages.
profile() {
  local n=$1 file="$OUT/callgrind.$LEVEL.$SIZE.$1" sink guard
  "$BIN" sink --listen "127.0.0.1:$UPSTREAM" >/dev/null 2>&1 &
  sink=$!
  local env=(MLLP_GUARD_RUNTIME=current-thread)
  case "$LEVEL" in shipped | audit-file) ;; *) env+=("MLLP_GUARD_LOG=$LEVEL") ;; esac
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$file" \
    "$BIN" run --config "$OUT/guard.yaml" 2>"$OUT/guard.$n.log" >/dev/null &
  guard=$!
  for _ in $(seq 150); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $LISTEN), timeout=0.2).close()" 2>/dev/null && break
    sleep 0.2
  done
  local ok=0
  python3 "$OUT/send.py" "$LISTEN" "$n" "$SIZE" || ok=1
  kill -TERM "$guard"; wait "$guard" || true
  kill "$sink"; wait "$sink" 2>/dev/null || true
  [ "$ok" = 0 ] || { echo "callgrind_guard.sh: the relay failed (see $OUT/guard.$n.log)" >&2; exit 1; }
  grep -m1 '^summary:' "$file" | awk '{print $2}'
}

one=$(profile 1)
many=$(profile "$N")
echo "level $LEVEL, $SIZE-byte messages: $(( (many - one) / (N - 1) )) user-space instructions per message ($many for $N messages, $one for one; $(git rev-parse --short HEAD))"
