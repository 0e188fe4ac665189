# Sourced by a Python plugin's build command, in this repository
# (plugins/sdk/python/build.sh) and in a project `sluice new` wrote
# (build.sh, with this file in sluice_plugin/): the one place the tool's
# version is pinned.
#
#   componentize WIT OUT WORLD DIR...   builds the module `app` found in the
#                                       DIRs (the plugin's, the SDK's) into
#                                       OUT, a `transform` or a `sink`
#
# componentize-py is installed on first use from PyPI into $SLUICE_TOOLS
# (default: ~/.cache/sluice/tools).
componentize() {
  local wit=$1 out=$2 world=$3 paths=() dir
  shift 3
  for dir in "$@"; do paths+=(-p "$dir"); done
  local version=0.25.1
  local tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-py-$version
  local name
  name=$(basename "$out" .wasm)
  if ! PYTHONPATH="$tools" "$tools/bin/componentize-py" --version >/dev/null 2>&1; then
    echo "$name: installing componentize-py $version (PyPI) into $tools" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "componentize-py==$version"
  fi
  echo "$name: building $out with componentize-py $version (20-30 s)" >&2
  PYTHONPATH="$tools" "$tools/bin/componentize-py" --quiet -d "$wit" -w "$world" componentize "${paths[@]}" app -o "$out"
}
