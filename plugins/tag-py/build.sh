#!/usr/bin/env bash
# Builds target/wasm32-wasip2/release/tag_py.wasm (beside the Rust plugins)
# with componentize-py, which is installed on first use from PyPI, at the
# version pinned here, into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=0.25.1
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-py-$version
if ! PYTHONPATH="$tools" "$tools/bin/componentize-py" --version >/dev/null 2>&1; then
  echo "tag-py: installing componentize-py $version (PyPI) into $tools" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "componentize-py==$version"
fi
out=${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release
mkdir -p "$out"
echo "tag-py: building $out/tag_py.wasm with componentize-py $version (20-30 s)" >&2
cd "$here"
PYTHONPATH="$tools" "$tools/bin/componentize-py" --quiet -d "$root/wit" -w transform componentize -p "$here" -p "$root/plugins/sdk/python" app -o "$out/tag_py.wasm"
