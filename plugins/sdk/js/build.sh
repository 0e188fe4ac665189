#!/usr/bin/env bash
# The build command of this repository's JavaScript plugins:
#   plugins/sdk/js/build.sh DIR NAME [WORLD]
# builds DIR/app.js (a transform, or WORLD: `sink`), with this SDK and the
# repository's WIT, into
# target/wasm32-wasip2/release/NAME.wasm (beside the Rust plugins), with
# componentize-js at the version componentize.sh pins.
set -euo pipefail
dir=$(cd "$1" && pwd)
sdk=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$sdk/../../.." && pwd)
out=${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release
mkdir -p "$out"
source "$sdk/componentize.sh"
# It runs in the repository's root, which holds both the plugin and the SDK.
cd "$root"
componentize "$root/wit" "$out/$2.wasm" "${3:-transform}" "$dir"
