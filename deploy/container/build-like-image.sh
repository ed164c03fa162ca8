#!/usr/bin/env bash
# Builds mllp-guard the way deploy/container/Dockerfile's build stage does, without Docker (CI
# cannot run Docker): a fresh directory holding only the files that stage COPYs, and that stage's
# own `RUN cargo build ...` line run in it. A file the image build would miss fails here too.
# It builds into its own target directory, target/image-like/: a binary built from the temporary
# context carries that context's path (the demo's default config is found through it), so it must
# never replace target/release/mllp-guard, which `cargo run --release -- demo` would then run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dockerfile="$repo/deploy/container/Dockerfile"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# The build stage: the lines from the first FROM up to the second.
stage=$(awk '/^FROM /{n++} n==1' "$dockerfile")
grep -q '^WORKDIR /src$' <<<"$stage" || { echo "expected WORKDIR /src in the build stage" >&2; exit 1; }
build=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' <<<"$stage")
[ -n "$build" ] || { echo "no 'RUN cargo build' line in the build stage" >&2; exit 1; }

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
echo "+ $build"
out="$repo/target/image-like"
(cd "$ctx" && CARGO_TARGET_DIR="$out" bash -c "$build")
"$out/release/mllp-guard" --help >/dev/null
echo "built $out/release/mllp-guard as the image would"
