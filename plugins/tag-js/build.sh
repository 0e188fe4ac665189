#!/bin/sh
# Builds target/wasm32-wasip2/release/tag_js.wasm with the repository's JavaScript build.
exec "$(dirname "$0")/../sdk/js/build.sh" "$(dirname "$0")" tag_js
