#!/usr/bin/env bash
# Fuzz smoke run of one target (default: the MLLP frame decoder).
# Usage: fuzz/smoke.sh [SECONDS] [TARGET]   (defaults 30, frame_decoder; run from anywhere)
# Targets: every file in fuzz/fuzz_targets (frame_decoder, msh_view, rules, config, ack,
# proxy_header, first_bytes, queue_salvage; see fuzz/Cargo.toml; fuzz/smoke-all.sh runs
# them all). Seeds come from fuzz/seeds/<target>/, new finds go to fuzz/corpus/<target>/.
# Needs the nightly toolchain (libFuzzer + ASan); installs cargo-fuzz if missing.
set -euo pipefail

SECS="${1:-30}"
TARGET="${2:-frame_decoder}"
case "$SECS" in
  ''|*[!0-9]*) echo "smoke.sh: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;;
esac

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -f "$FUZZ_DIR/fuzz_targets/$TARGET.rs" ]; then
  echo "smoke.sh: no fuzz target '$TARGET'; the targets are:" \
    "$(cd "$FUZZ_DIR/fuzz_targets" && ls *.rs | sed 's/\.rs$//' | tr '\n' ' ')" >&2
  exit 2
fi
cd "$FUZZ_DIR/.."   # cargo fuzz expects the crate root (it finds fuzz/ below it)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "smoke.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# libFuzzer exits 1 on a missing corpus directory: create both.
mkdir -p "fuzz/corpus/$TARGET" "fuzz/seeds/$TARGET"

# Always nightly (never a stable probe): a failed stable probe is cached in
# fuzz/target/.rustc_info.json and breaks later nightly runs.
exec cargo +nightly fuzz run "$TARGET" \
  "fuzz/corpus/$TARGET" "fuzz/seeds/$TARGET" -- \
  -max_total_time="$SECS" -timeout=5 -rss_limit_mb=2048
