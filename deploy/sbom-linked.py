#!/usr/bin/env python3
"""Cuts a CycloneDX SBOM down to the crates that are linked into one binary.

Usage: deploy/sbom-linked.py --binary BIN --sbom IN.cdx.json --out OUT.cdx.json [--source-dir DIR]

`cargo cyclonedx` lists every package of Cargo.lock's resolve: build scripts' and proc macros'
crates that never reach the binary, and optional crates such as `ring` that no enabled feature
pulls in. A scanner would then report their advisories against a binary that does not contain
them. The truth is the dependency list `cargo auditable build` embeds in the binary: the ELF
section `.dep-v0`, zlib-compressed JSON `{"packages": [{name, version, source, kind,
dependencies, root}]}`, where `kind` is "build" for crates used only at build time (absent:
linked). That list comes from `cargo metadata`, which also names optional crates no enabled
feature builds (ring) and proc macros' crates (syn, quote, ...), so with --target it is
intersected with what cargo builds into the binary (`cargo tree -e normal,no-proc-macro
--target T`). This keeps exactly those components,
fails if the binary lists a crate the SBOM lacks, drops dependency edges to removed components,
and makes the document reproducible: its timestamp is SOURCE_DATE_EPOCH (the commit's time) and
its serial number a UUID derived from the binary's SHA-256, which it records on the root
component, and the checkout's path (in the root's bom-ref: `path+file:///...`) is written as
/build/mllp-guard, as the release build remaps it. Prints the number of components kept. Needs python3 and objcopy (binutils).
"""

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
import zlib


def embedded_packages(binary):
    """The package list cargo-auditable embedded in `binary` (its `.dep-v0` section)."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "dep-v0")
        done = subprocess.run(
            ["objcopy", "--dump-section", f".dep-v0={dump}", binary, os.path.join(tmp, "copy")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not os.path.exists(dump):
            sys.exit(
                f"sbom-linked: {binary} has no .dep-v0 section (build it with `cargo auditable build`): "
                + done.stderr.strip()
            )
        with open(dump, "rb") as f:
            return json.loads(zlib.decompress(f.read()))["packages"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True, help="a binary built with cargo auditable")
    ap.add_argument("--sbom", required=True, help="the CycloneDX JSON cargo cyclonedx wrote")
    ap.add_argument("--out", required=True, help="where to write the filtered SBOM")
    ap.add_argument("--source-dir", help="the checkout's path, replaced by /build/mllp-guard")
    ap.add_argument("--target", help="also require each crate in `cargo tree -e normal --target`")
    args = ap.parse_args()

    packages = embedded_packages(args.binary)
    roots = [p for p in packages if p.get("root")]
    linked = {
        (p["name"], p["version"])
        for p in packages
        if p.get("kind", "runtime") == "runtime" and not p.get("root")
    }
    if args.target:
        # cargo-auditable takes its list from `cargo metadata`, which also names optional
        # dependencies no enabled feature turns on (ring, under rustls-webpki): keep only what
        # cargo's feature resolver builds for this target (`cargo tree -e normal`).
        tree = subprocess.run(
            ["cargo", "tree", "--locked", "-e", "normal,no-proc-macro", "--target", args.target,
             "--prefix", "none", "-f", "{p}"],
            capture_output=True, text=True, check=True,
            cwd=args.source_dir or None,
        ).stdout
        built = set()
        for line in tree.splitlines():
            words = line.split()
            if len(words) >= 2 and words[1].startswith("v"):
                built.add((words[0], words[1][1:]))
        dropped = sorted(linked - built)
        if dropped:
            print("sbom-linked: not built for " + args.target + " (left out): "
                  + ", ".join(f"{n} {v}" for n, v in dropped), file=sys.stderr)
        linked &= built

    with open(args.sbom) as f:
        text = f.read()
    if args.source_dir:
        src = os.path.abspath(args.source_dir)
        text = text.replace(json.dumps(src)[1:-1], "/build/mllp-guard")
    bom = json.loads(text)
    components = bom.get("components", [])
    kept = [c for c in components if (c.get("name"), c.get("version")) in linked]
    found = {(c["name"], c["version"]) for c in kept}
    missing = sorted(linked - found)
    if missing:
        sys.exit(
            "sbom-linked: the binary links crates the SBOM does not list (was it made for the same "
            f"target and features?): {', '.join(f'{n} {v}' for n, v in missing)}"
        )
    kept_refs = {c.get("bom-ref") for c in kept}
    root = bom.get("metadata", {}).get("component", {})
    allowed = set(kept_refs) | {root.get("bom-ref")}
    for sub in root.get("components", []):
        allowed.add(sub.get("bom-ref"))
    dependencies = []
    for dep in bom.get("dependencies", []):
        if dep.get("ref") in allowed:
            dep = dict(dep)
            dep["dependsOn"] = [r for r in dep.get("dependsOn", []) if r in allowed]
            dependencies.append(dep)
    bom["components"] = kept
    bom["dependencies"] = dependencies

    with open(args.binary, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    bom["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, "sha256:" + digest))
    meta = bom.setdefault("metadata", {})
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        meta["timestamp"] = (
            datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
            .isoformat()
            .replace("+00:00", "Z")
        )
    if root:
        root["hashes"] = [{"alg": "SHA-256", "content": digest}]
        props = [p for p in root.get("properties", []) if p.get("name") != "mllp-guard:binary"]
        props.append({"name": "mllp-guard:binary", "value": os.path.basename(args.binary)})
        root["properties"] = props
    meta.setdefault("properties", [])
    meta["properties"] = [p for p in meta["properties"] if p.get("name") != "mllp-guard:sbom-scope"]
    meta["properties"].append(
        {
            "name": "mllp-guard:sbom-scope",
            "value": "components = the crates linked into the binary, as cargo-auditable recorded "
            "them in its .dep-v0 section (no build-only crates, no crate the binary does not contain)",
        }
    )
    with open(args.out, "w") as f:
        json.dump(bom, f, indent=2, sort_keys=False)
        f.write("\n")
    if len(roots) != 1:
        print(f"sbom-linked: warning: {len(roots)} root packages in .dep-v0", file=sys.stderr)
    print(len(kept))


if __name__ == "__main__":
    main()
