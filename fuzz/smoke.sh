#!/usr/bin/env bash
# Fuzz smoke run of the MLLP frame decoder.
# Usage: fuzz/smoke.sh [SECONDS]   (default 30; run from anywhere)
# Needs the nightly toolchain (libFuzzer + ASan); installs cargo-fuzz if missing.
set -euo pipefail

SECS="${1:-30}"
case "$SECS" in
  ''|*[!0-9]*) echo "smoke.sh: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;;
esac

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR/.."   # cargo fuzz expects the crate root (it finds fuzz/ below it)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "smoke.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# libFuzzer exits 1 on a missing corpus directory: create both.
mkdir -p fuzz/corpus/frame_decoder fuzz/seeds/frame_decoder

# Always nightly (never a stable probe): a failed stable probe is cached in
# fuzz/target/.rustc_info.json and breaks later nightly runs.
exec cargo +nightly fuzz run frame_decoder \
  fuzz/corpus/frame_decoder fuzz/seeds/frame_decoder -- \
  -max_total_time="$SECS" -timeout=5 -rss_limit_mb=2048
