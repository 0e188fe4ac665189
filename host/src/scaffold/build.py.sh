#!/usr/bin/env bash
# Builds the plugin into {{crate_file}}.wasm, beside this script, with
# componentize-py at the version sluice_plugin/componentize.sh pins
# (installed on first use into $SLUICE_TOOLS, default ~/.cache/sluice/tools).
set -euo pipefail
cd "$(dirname "$0")"
source sluice_plugin/componentize.sh
componentize wit {{crate_file}}.wasm {{world}} .
echo "build.sh: built {{crate_file}}.wasm" >&2
