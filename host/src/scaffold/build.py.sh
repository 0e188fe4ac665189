#!/usr/bin/env bash
# Builds the plugin into {{crate_file}}.wasm, beside this script, with
# componentize-py, installed on first use from PyPI at the version pinned
# here into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
set -euo pipefail
cd "$(dirname "$0")"
version=0.25.1
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-py-$version
if ! PYTHONPATH="$tools" "$tools/bin/componentize-py" --version >/dev/null 2>&1; then
    echo "build.sh: installing componentize-py $version (PyPI) into $tools" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "componentize-py==$version"
fi
echo "build.sh: building {{crate_file}}.wasm with componentize-py $version (20-30 s)" >&2
PYTHONPATH="$tools" "$tools/bin/componentize-py" --quiet -d wit -w transform componentize -p . app -o {{crate_file}}.wasm
echo "build.sh: built {{crate_file}}.wasm" >&2
