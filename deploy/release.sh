#!/usr/bin/env bash
# Builds the release artefacts of mllp-guard from a clean checkout into OUTDIR.
#
# Usage: deploy/release.sh OUTDIR [--sign-key FILE] [--target x86_64-unknown-linux-musl] [--allow-dirty]
#
# For the default target (x86_64-unknown-linux-gnu) it writes:
#   mllp-guard-<version>-x86_64-linux-gnu.tar.gz   binary, LICENSE, THIRD-PARTY-NOTICES, README.md,
#                                                  CHANGELOG.md, SECURITY.md, an example config,
#                                                  the systemd unit and sysusers file, man pages
#   mllp-guard-<version>-x86_64-linux-gnu.debug    the binary's debug info (line tables), for crash
#                                                  analysis: gdb finds it beside the binary
#                                                  (.gnu_debuglink)
#   mllp-guard_<version>-1_amd64.deb               the Debian package (cargo deb, same binary)
#   mllp-guard-<version>.cdx.json                  CycloneDX SBOM of the crates linked into the binary
#   SHA256SUMS                                     sha256sum of every artefact in OUTDIR
#   SHA256SUMS.minisig                             with --sign-key: minisign's signature of SHA256SUMS
# With --target x86_64-unknown-linux-musl: a static binary (mimalloc as its allocator) in
# mllp-guard-<version>-x86_64-linux-musl.tar.gz, its .debug, mllp-guard-<version>-x86_64-linux-musl.cdx.json
# (no .deb), and SHA256SUMS (and its signature) over everything in OUTDIR, so both targets can share one.
#
# The build: `cargo auditable build --profile dist --locked` (the dependency list is embedded in
# the binary's .dep-v0 section for Trivy, Grype and syft), with every build-machine path remapped
# (--remap-path-prefix for rustc, -ffile-prefix-map for C) and SOURCE_DATE_EPOCH = the commit's
# time, so two checkouts of one commit build the same bytes. The debug info is split off
# (objcopy --only-keep-debug), the shipped binary stripped; it must stay at most 20 MB and carry
# no path of this machine. THIRD-PARTY-NOTICES and deploy/man/ must be what cargo-about and
# `mllp-guard man` generate now (else it stops and says how to regenerate them).
#
# A dirty tree is refused (the artefacts would not match any commit); --allow-dirty (or
# MLLP_GUARD_ALLOW_DIRTY=1) builds anyway and the binary's --version then says "-dirty".
#
# Needs: cargo-auditable, cargo-cyclonedx, cargo-about, cargo-deb (cargo install --locked ...),
# objcopy and readelf (binutils), python3, sha256sum; minisign with --sign-key; musl-tools for
# the musl target. The key is never part of the repository: minisign -G -p mllp-guard.pub -s KEY.
set -euo pipefail

usage() { sed -n '3,4p' "$0" | sed 's/^# //' >&2; exit 2; }

outdir=""
sign_key=""
target="x86_64-unknown-linux-gnu"
allow_dirty="${MLLP_GUARD_ALLOW_DIRTY:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --sign-key) [ $# -ge 2 ] || usage; sign_key="$2"; shift 2 ;;
        --sign-key=*) sign_key="${1#*=}"; shift ;;
        --target) [ $# -ge 2 ] || usage; target="$2"; shift 2 ;;
        --target=*) target="${1#*=}"; shift ;;
        --allow-dirty) allow_dirty=1; shift ;;
        -h|--help) usage ;;
        -*) echo "release.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$outdir" ] || usage; outdir="$1"; shift ;;
    esac
done
[ -n "$outdir" ] || usage
case "$target" in
    x86_64-unknown-linux-gnu) suffix=x86_64-linux-gnu; static=no ;;
    x86_64-unknown-linux-musl) suffix=x86_64-linux-musl; static=yes ;;
    *) echo "release.sh: --target must be x86_64-unknown-linux-gnu or x86_64-unknown-linux-musl, not $target" >&2; exit 2 ;;
esac
if [ -n "$sign_key" ] && [ ! -r "$sign_key" ]; then
    echo "release.sh: --sign-key $sign_key: no such readable file" >&2; exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=$SECONDS
step() { echo "== $* ($((SECONDS - started)) s)"; }

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "release.sh: $1 not found: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup)"
need git "apt-get install git"
need objcopy "apt-get install binutils"
need readelf "apt-get install binutils"
need python3 "apt-get install python3"
need sha256sum "apt-get install coreutils"
need cargo-auditable "cargo install --locked cargo-auditable"
need cargo-cyclonedx "cargo install --locked cargo-cyclonedx"
need cargo-about "cargo install --locked cargo-about"
[ "$static" = yes ] || need cargo-deb "cargo install --locked cargo-deb"
[ "$static" = no ] || need musl-gcc "apt-get install musl-tools; rustup target add x86_64-unknown-linux-musl"
[ -z "$sign_key" ] || need minisign "apt-get install minisign"

step "source: a clean checkout"
if [ -n "$(git status --porcelain)" ]; then
    if [ -z "$allow_dirty" ]; then
        git status --short >&2
        echo "release.sh: the tree has changes (above): commit or stash them, or pass --allow-dirty" >&2
        exit 1
    fi
    echo "warning: building a dirty tree (--allow-dirty): --version will say -dirty"
fi
commit=$(git rev-parse HEAD)
version=$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="mllp-guard"][0]["version"])')
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
export SOURCE_DATE_EPOCH
echo "mllp-guard $version, commit $commit, target $target, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
if [ -d "$outdir/.fingerprint" ]; then
    echo "release.sh: $outdir is a cargo build directory: give an OUTDIR of its own" >&2
    exit 2
fi
name="mllp-guard-$version-$suffix"
target_dir=$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
stage="$target_dir/release-stage/$target"
rm -rf "$stage"
mkdir -p "$stage"

step "build: cargo auditable build --profile dist --target $target"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
cargo_home=$(cd "$cargo_home" && pwd)
sysroot=$(rustc --print sysroot)
# No path of this machine in the binary: the checkout, cargo's registry and git checkouts, the
# toolchain. rustc applies the last matching prefix, so the longest (most specific) comes last.
maps=$(printf '%s\n' "$repo=/build/mllp-guard" "$cargo_home=/cargo" "$sysroot=/rustc-sysroot" \
    | awk -F= '{ print length($1) "\t" $0 }' | sort -n | cut -f2-)
rustflags=()
cflags=()
while IFS= read -r map; do
    rustflags+=("--remap-path-prefix=$map")
    cflags+=("-ffile-prefix-map=$map")
done <<<"$maps"
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; echo "${rustflags[*]}")
export CARGO_ENCODED_RUSTFLAGS
unset RUSTFLAGS
# C code (aws-lc, mimalloc) built by the cc crate: its file names in asserts and debug info.
CFLAGS="${cflags[*]}"
export CFLAGS
cargo auditable build --profile dist --locked --bin mllp-guard --target "$target"
built="$target_dir/$target/dist/mllp-guard"

step "split the debug info, strip the binary"
debug_file="$outdir/$name.debug"
cp "$built" "$stage/mllp-guard.full"
objcopy --only-keep-debug "$stage/mllp-guard.full" "$stage/$name.debug"
objcopy --strip-all --add-gnu-debuglink="$stage/$name.debug" "$stage/mllp-guard.full" "$stage/mllp-guard"
cp "$stage/$name.debug" "$debug_file"
bin="$stage/mllp-guard"

step "check the binary"
size=$(stat -c %s "$bin")
echo "binary: $size bytes (unstripped $(stat -c %s "$built"), debug info $(stat -c %s "$debug_file"))"
if [ "$size" -gt 20000000 ]; then
    echo "release.sh: the shipped binary is $size bytes, over 20 MB" >&2; exit 1
fi
# (.debug_gdb_scripts is not debug info: an allocated section naming Rust's gdb pretty printers.)
if readelf -S "$bin" | grep -Eq '\.debug_(info|line|str|abbrev|aranges|ranges|rnglists|loc|loclists|frame)\b'; then
    echo "release.sh: the shipped binary still has debug sections" >&2; exit 1
fi
readelf -S "$bin" | grep -q '\.dep-v0' || { echo "release.sh: no .dep-v0 section (cargo auditable)" >&2; exit 1; }
for path in "$repo" "$cargo_home" "$sysroot" "$HOME"; do
    [ "$path" != / ] || continue
    if grep -a -q -F "$path/" "$bin"; then
        echo "release.sh: the binary contains the build machine's path $path:" >&2
        grep -a -o -F "$path/" "$bin" | head -3 >&2
        exit 1
    fi
done
if [ "$static" = yes ]; then
    if readelf -l "$bin" | grep -q 'INTERP' || readelf -d "$bin" | grep -q 'NEEDED'; then
        echo "release.sh: the musl binary is not static:" >&2
        readelf -d "$bin" >&2
        exit 1
    fi
fi
stamp=$("$bin" --version)
echo "$stamp"
# The commit as built: a file changed while it built (build.rs looks then) makes it "-dirty".
if [ -n "$allow_dirty" ]; then expected="$version (git ${commit:0:12}"; else expected="$version (git ${commit:0:12}, "; fi
case "$stamp" in
    *"$expected"*", dist)") ;;
    *) echo "release.sh: --version should name $version, commit ${commit:0:12} (clean) and the dist profile" >&2; exit 1 ;;
esac

step "man pages and notices are current"
# cargo-about reads `cargo metadata` offline, which needs every platform's crates in the
# registry cache (a build fetches only this target's): fetch them all, as the lock file names.
cargo fetch --locked --quiet
"$bin" man --out "$stage/man"
if ! diff -r "$stage/man" deploy/man >"$stage/man.diff"; then
    cat "$stage/man.diff" >&2
    echo "release.sh: deploy/man/ is stale: cargo run -- man --out deploy/man, and commit it" >&2
    exit 1
fi
cargo about generate --locked --offline --fail -c about.toml about.hbs -o "$stage/THIRD-PARTY-NOTICES"
if ! cmp -s "$stage/THIRD-PARTY-NOTICES" THIRD-PARTY-NOTICES; then
    diff "$stage/THIRD-PARTY-NOTICES" THIRD-PARTY-NOTICES | head -20 >&2 || true
    echo "release.sh: THIRD-PARTY-NOTICES is stale: bash deploy/notices.sh, and commit it" >&2
    exit 1
fi

step "SBOM: cargo cyclonedx, cut down to the crates in the binary"
if [ "$static" = yes ]; then sbom="$outdir/mllp-guard-$version-$suffix.cdx.json"; else sbom="$outdir/mllp-guard-$version.cdx.json"; fi
trap 'rm -f "$repo/mllp-guard.all.json"' EXIT
cargo cyclonedx --format json --spec-version 1.5 --no-build-deps --target "$target" --override-filename "mllp-guard.all" >/dev/null
mv mllp-guard.all.json "$stage/mllp-guard.all.cdx.json"
components=$(python3 deploy/sbom-linked.py --binary "$bin" --sbom "$stage/mllp-guard.all.cdx.json" --out "$sbom" --source-dir "$repo" --target "$target")
if grep -q -F "$repo" "$sbom"; then
    echo "release.sh: the SBOM names the checkout's path $repo" >&2; exit 1
fi
echo "SBOM: $components components (cargo cyclonedx listed $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$stage/mllp-guard.all.cdx.json"))"

step "tarball $name.tar.gz"
tree="$stage/tar/$name"
mkdir -p "$tree/man" "$tree/systemd"
install -m 0755 "$bin" "$tree/mllp-guard"
install -m 0644 LICENSE THIRD-PARTY-NOTICES README.md CHANGELOG.md SECURITY.md "$tree/"
install -m 0644 deploy/debian/guard.yaml "$tree/guard.yaml.example"
install -m 0644 deploy/systemd/mllp-guard.service deploy/systemd/mllp-guard.sysusers "$tree/systemd/"
install -m 0644 deploy/man/*.1 "$tree/man/"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    --mode='u+rw,go+r,go-w' --format=gnu -C "$stage/tar" -cf - "$name" \
    | gzip -n -9 >"$outdir/$name.tar.gz"

if [ "$static" = no ]; then
    step "Debian package: cargo deb --no-build --no-strip (the binary above)"
    # cargo-deb takes target/release/mllp-guard from <target dir>/<triple>/<profile>/: give it a
    # target directory that holds the stripped binary, so the .deb and the tarball ship one file.
    debtarget="$stage/debtarget"
    mkdir -p "$debtarget/$target/dist"
    cp "$bin" "$debtarget/$target/dist/mllp-guard"
    rm -f "$outdir"/mllp-guard_*.deb
    CARGO_TARGET_DIR="$debtarget" cargo deb --no-build --no-strip --no-dbgsym --profile dist \
        --target "$target" --locked --output "$outdir/"
fi

step "SHA256SUMS"
rm -f "$outdir/SHA256SUMS" "$outdir/SHA256SUMS.minisig"
(cd "$outdir" && find . -maxdepth 1 -type f \( -name 'mllp-guard-*' -o -name 'mllp-guard_*.deb' \) -printf '%P\n' \
    | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
if [ -n "$sign_key" ]; then
    minisign -S -s "$sign_key" -m "$outdir/SHA256SUMS" -x "$outdir/SHA256SUMS.minisig" \
        -t "mllp-guard $version (commit $commit) release artefacts"
fi
(cd "$outdir" && sha256sum --quiet -c SHA256SUMS)

step "done"
(cd "$outdir" && ls -l)
echo "shipped binary $size bytes; SBOM $components components; $(sha256sum "$bin" | cut -c1-64)  $name/mllp-guard"
