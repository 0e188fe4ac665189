#!/usr/bin/env bash
# The build command of this repository's Python plugins:
#   plugins/sdk/python/build.sh DIR NAME
# builds DIR/app.py, with this SDK and the repository's WIT, into
# target/wasm32-wasip2/release/NAME.wasm (beside the Rust plugins), with
# componentize-py, installed on first use from PyPI at the version pinned
# here into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
set -euo pipefail
dir=$(cd "$1" && pwd)
name=$2
sdk=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$sdk/../../.." && pwd)
version=0.25.1
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-py-$version
if ! PYTHONPATH="$tools" "$tools/bin/componentize-py" --version >/dev/null 2>&1; then
  echo "$name: installing componentize-py $version (PyPI) into $tools" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "componentize-py==$version"
fi
out=${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release
mkdir -p "$out"
echo "$name: building $out/$name.wasm with componentize-py $version (20-30 s)" >&2
cd "$dir"
PYTHONPATH="$tools" "$tools/bin/componentize-py" --quiet -d "$root/wit" -w transform componentize -p "$dir" -p "$sdk" app -o "$out/$name.wasm"
