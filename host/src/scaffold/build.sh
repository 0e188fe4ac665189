#!/bin/sh
# Builds the plugin into {{crate_file}}.wasm, beside this script.
set -eu
cd "$(dirname "$0")"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "build.sh: installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate_file}}.wasm" {{crate_file}}.wasm
echo "build.sh: built {{crate_file}}.wasm" >&2
