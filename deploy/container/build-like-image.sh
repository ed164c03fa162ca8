#!/usr/bin/env bash
# Builds mllp-guard the way deploy/container/Dockerfile's build stage does, without Docker (CI
# cannot run Docker): a fresh directory holding only the files that stage COPYs, and the stage's
# own RUN lines after `WORKDIR /src` run in it (`cargo auditable build --profile dist ...`, then
# the strip). A file the image build would miss fails here too. The RUN lines before WORKDIR set
# up the builder image itself (cargo-auditable, the runtime's directories) and are not run here:
# cargo-auditable must be installed (cargo install --locked cargo-auditable).
# It builds into its own target directory, target/image-like/ (the context's `target` is a link
# to it): a binary built from the temporary context carries that context's path (the demo's
# default config is found through it), so it must never replace target/release/mllp-guard.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dockerfile="$repo/deploy/container/Dockerfile"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# The build stage: the lines from the first FROM up to the second.
stage=$(awk '/^FROM /{n++} n==1' "$dockerfile")
grep -q '^WORKDIR /src$' <<<"$stage" || { echo "expected WORKDIR /src in the build stage" >&2; exit 1; }
# The RUN lines after WORKDIR /src (one line each), the cargo build among them.
runs=$(awk '/^WORKDIR \/src$/{w=1} w && /^RUN /{sub(/^RUN /, ""); print}' <<<"$stage")
grep -Eq '^cargo (auditable )?build ' <<<"$runs" || { echo "no 'RUN cargo build' line after WORKDIR /src" >&2; exit 1; }
built=$(sed -n 's#^.*target/\([a-z-]*\)/mllp-guard$#\1#p' <<<"$runs" | head -1)
[ -n "$built" ] || { echo "the build stage names no target/PROFILE/mllp-guard" >&2; exit 1; }

while read -r op rest; do
    [ "$op" = COPY ] || continue
    read -ra parts <<<"$rest"
    case "${parts[0]}" in --*) echo "COPY flags are not supported here: $rest" >&2; exit 1 ;; esac
    dest=${parts[-1]}
    unset 'parts[-1]'
    if [ "${#parts[@]}" -gt 1 ] || [[ $dest == */ ]]; then
        mkdir -p "$ctx/$dest"
        for src in "${parts[@]}"; do cp -a "$repo/$src" "$ctx/$dest/"; done
    else
        mkdir -p "$(dirname "$ctx/$dest")"
        cp -a "$repo/${parts[0]}" "$ctx/$dest"
    fi
done <<<"$stage"

echo "build context: $(cd "$ctx" && find . -maxdepth 1 -mindepth 1 -printf '%P ' | sort)"
out="$repo/target/image-like"
mkdir -p "$out"
ln -s "$out" "$ctx/target"
while IFS= read -r run; do
    echo "+ $run"
    (cd "$ctx" && env -u CARGO_TARGET_DIR bash -c "$run")
done <<<"$runs"
"$out/$built/mllp-guard" --version
if readelf -S "$out/$built/mllp-guard" | grep -Eq '\.debug_(info|line|str|abbrev)\b'; then
    echo "the image's binary is not stripped" >&2; exit 1
fi
echo "built $out/$built/mllp-guard as the image would ($(stat -c %s "$out/$built/mllp-guard") bytes)"
