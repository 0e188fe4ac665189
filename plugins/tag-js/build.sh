#!/usr/bin/env bash
# Builds target/wasm32-wasip2/release/tag_js.wasm (beside the Rust plugins)
# with componentize-js, which is installed on first use from npm, at the
# versions locked in plugins/sdk/js/tools, into $SLUICE_TOOLS (default:
# ~/.cache/sluice/tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=0.23.0
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-js-$version
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
  echo "tag-js: installing componentize-js $version (npm) into $tools" >&2
  mkdir -p "$tools"
  cp "$root/plugins/sdk/js/tools/package.json" "$root/plugins/sdk/js/tools/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
out=${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release
mkdir -p "$out"
echo "tag-js: building $out/tag_js.wasm with componentize-js $version (15-50 s)" >&2
# The component's entry: the host's services first, then the plugin's exports.
entry=$(mktemp "$here/.entry-XXXXXX.js")
trap 'rm -f "$entry"' EXIT
printf 'import "../sdk/js/sluice-component.js";\nexport { init, process } from "./app.js";\n' >"$entry"
# componentize-js reads modules only under the folder it runs in: here, the
# one that holds the plugin and the SDK.
cd "$root/plugins"
"$tools/node_modules/.bin/componentize-js" "$entry" --wit "$root/wit" -n transform -d http fetch-event -o "$out/tag_js.wasm"
