#!/bin/sh
exec "$(dirname "$0")/../../../plugins/sdk/python/build.sh" "$(dirname "$0")" raises_py
