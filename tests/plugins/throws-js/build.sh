#!/bin/sh
exec "$(dirname "$0")/../../../plugins/sdk/js/build.sh" "$(dirname "$0")" throws_js
