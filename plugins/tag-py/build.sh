#!/bin/sh
# Builds target/wasm32-wasip2/release/tag_py.wasm with the repository's Python build.
exec "$(dirname "$0")/../sdk/python/build.sh" "$(dirname "$0")" tag_py
