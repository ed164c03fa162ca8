#!/usr/bin/env bash
# Regenerates THIRD-PARTY-NOTICES (the licenses of the crates in the binary) with cargo-about,
# from about.toml and the template about.hbs. Run it after changing dependencies and commit the
# result; deploy/release.sh and a test refuse a stale file.
# Needs cargo-about: cargo install --locked cargo-about
set -euo pipefail
cd "$(dirname "$0")/.."
# `cargo metadata --offline` (cargo-about) needs every platform's crates in the cache.
cargo fetch --locked --quiet
cargo about generate --locked --offline --fail -c about.toml about.hbs -o THIRD-PARTY-NOTICES
echo "wrote THIRD-PARTY-NOTICES ($(grep -c '^Used by:' THIRD-PARTY-NOTICES) license texts)"
