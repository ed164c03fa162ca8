#!/usr/bin/env bash
# Makes the Python the tests use: a virtualenv in target/pyenv with tests/python/requirements.txt
# (python-hl7) and any further requirement files named as arguments (.ci/run adds
# deploy/ci-requirements.txt). Never installs into the system's Python, which Debian and Ubuntu
# mark externally managed (PEP 668). The tests find target/pyenv/bin/python3 by themselves.
#
# Needs python3 with its venv module (Debian/Ubuntu: apt-get install python3-venv). PYTHON=...
# chooses another interpreter. Quick when nothing changed: each requirement file is installed
# once per content.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/pyenv
python=${PYTHON:-python3}

if ! [ -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    mkdir -p target
    if ! "$python" -m venv "$venv" >/dev/null; then
        rm -rf "$venv"
        echo "tests/python/venv.sh: \`$python -m venv\` failed; on Debian or Ubuntu install the venv module: apt-get install python3-venv" >&2
        exit 1
    fi
fi

for requirements in tests/python/requirements.txt "$@"; do
    stamp="$venv/installed-$(basename "$requirements").sha256"
    sum=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
        "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$requirements"
        echo "$sum" >"$stamp"
    fi
done
