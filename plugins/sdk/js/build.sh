#!/usr/bin/env bash
# The build command of this repository's JavaScript plugins:
#   plugins/sdk/js/build.sh DIR NAME
# builds DIR/app.js, with this SDK and the repository's WIT, into
# target/wasm32-wasip2/release/NAME.wasm (beside the Rust plugins), with
# componentize-js, installed on first use from npm at the versions locked in
# tools/ here into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
set -euo pipefail
dir=$(cd "$1" && pwd)
name=$2
sdk=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$sdk/../../.." && pwd)
version=0.23.0
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-js-$version
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
  echo "$name: installing componentize-js $version (npm) into $tools" >&2
  mkdir -p "$tools"
  cp "$sdk/tools/package.json" "$sdk/tools/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
out=${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release
mkdir -p "$out"
echo "$name: building $out/$name.wasm with componentize-js $version (15-50 s)" >&2
# componentize-js reads modules only under the folder it runs in, so it runs
# in the repository's root; the entry imports the host's services first,
# then re-exports the plugin's.
cd "$root"
entry=$(mktemp "$dir/.entry-XXXXXX.js")
trap 'rm -f "$entry"' EXIT
printf 'import "%s/sluice-component.js";\nexport { init, process } from "./app.js";\n' "$(realpath --relative-to="$dir" "$sdk")" >"$entry"
"$tools/node_modules/.bin/componentize-js" "$entry" --wit "$root/wit" -n transform -d http fetch-event -o "$out/$name.wasm"
