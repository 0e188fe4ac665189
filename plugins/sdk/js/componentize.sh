# Sourced by a JavaScript plugin's build command, in this repository
# (plugins/sdk/js/build.sh) and in a project `sluice new` wrote (build.sh,
# with this file in sluice/): the one place the tool's version is pinned,
# its packages locked in tools/ beside this file.
#
#   componentize WIT OUT WORLD DIR   builds DIR/app.js, with the SDK beside
#                                    this file, into OUT, a `transform` or
#                                    a `sink`
#
# componentize-js reads modules only under the folder it runs in: run it
# from a folder that holds DIR and the SDK. It is installed on first use
# from npm into $SLUICE_TOOLS (default: ~/.cache/sluice/tools).
componentize() {
  local wit=$1 out=$2 world=$3 dir=$4 exports
  local sdk
  sdk=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  local version=0.23.0
  local tools=${SLUICE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}/componentize-js-$version
  local name
  name=$(basename "$out" .wasm)
  if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    echo "$name: installing componentize-js $version (npm) into $tools" >&2
    mkdir -p "$tools"
    cp "$sdk/tools/package.json" "$sdk/tools/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
  fi
  echo "$name: building $out with componentize-js $version (15-50 s)" >&2
  case $world in
    transform) exports="init, process" ;;
    sink) exports="init, consume, tick, snapshot, restore" ;;
    *) echo "$name: no world $world (transform or sink)" >&2; return 2 ;;
  esac
  # The component's entry: the host's services first, then the plugin's exports.
  local entry relative
  entry=$(mktemp "$dir/.entry-XXXXXX.js")
  relative=$(realpath --relative-to="$dir" "$sdk")
  [[ $relative == ../* ]] || relative=./$relative
  printf 'import "%s/sluice-component.js";\nexport { %s } from "./app.js";\n' "$relative" "$exports" >"$entry"
  local status=0
  "$tools/node_modules/.bin/componentize-js" "$entry" --wit "$wit" -n "$world" -d http fetch-event -o "$out" || status=$?
  rm -f "$entry"
  return $status
}
