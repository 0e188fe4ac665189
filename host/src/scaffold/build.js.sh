#!/usr/bin/env bash
# Builds the plugin into {{crate_file}}.wasm, beside this script, with
# componentize-js, installed on first use from npm at the versions locked in
# sluice/tools into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
set -euo pipefail
cd "$(dirname "$0")"
version=0.23.0
tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-js-$version
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    echo "build.sh: installing componentize-js $version (npm) into $tools" >&2
    mkdir -p "$tools"
    cp sluice/tools/package.json sluice/tools/package-lock.json "$tools/"
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
echo "build.sh: building {{crate_file}}.wasm with componentize-js $version (15-50 s)" >&2
# The component's entry: the host's services first, then the plugin's exports.
entry=$(mktemp .entry-XXXXXX.js)
trap 'rm -f "$entry"' EXIT
printf 'import "./sluice/sluice-component.js";\nexport { init, process } from "./app.js";\n' >"$entry"
"$tools/node_modules/.bin/componentize-js" "$entry" --wit wit -n transform -d http fetch-event -o {{crate_file}}.wasm
echo "build.sh: built {{crate_file}}.wasm" >&2
