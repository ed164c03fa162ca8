#!/usr/bin/env bash
# Fuzz smoke run of every target, SECONDS each (default 30), one after the other; stops at the
# first target that finds a crash (its input is left in fuzz/artifacts/<target>/).
# Usage: fuzz/smoke-all.sh [SECONDS]   (run from anywhere)
set -euo pipefail

SECS="${1:-30}"
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for target in frame_decoder msh_view rules config queue_salvage; do
  echo "== fuzz $target (${SECS}s)"
  bash "$FUZZ_DIR/smoke.sh" "$SECS" "$target"
done
