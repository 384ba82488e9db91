#!/usr/bin/env bash
# The layers point one way (README "Layout"; CMakeLists.txt builds one library per layer): each top-level folder
# may include only its own headers and those of the layers below it. This reads every quoted include of every
# layer's sources and fails naming file:line for one that reaches up (or sideways), and for a C or C++ source
# tracked in a folder the map below does not place. It also keeps the CUDA headers in the runtime and above, and
# SQLite in the database layer. Run by the CPU tests (tests/cpu/test_layers.cpp); usage: check_layers.sh [ROOT].
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"

# Each layer and what it may include besides itself (the closure: what its CMake target links, directly or not).
declare -A may=(
  [templates]=""                    # the kernel templates and their parameter structs (embedded by codegen)
  [base]=""                         # error types, Dim3
  [reference]=""                    # the float64 CPU reference: std only
  [codegen]="templates base"
  [cache]="base"
  [db]="codegen templates base"     # the tuning database: the runtime reads it, the tuner writes it
  [runtime]="db cache codegen templates base"
  [tuner]="runtime db cache codegen templates base"
  [cli]="tuner runtime db cache codegen templates base"
)
# Headers from outside that belong to one layer: the layers that may include them.
declare -A external=(
  [cuda.h]="runtime tuner cli"
  [nvrtc.h]="runtime tuner cli"
  [sqlite3.h]="db"
)
# Folders of C/C++ sources that are not layers: they may include anything.
unlayered=" tests "

sources() { find "$@" -type f \( -name '*.h' -o -name '*.c' -o -name '*.cpp' -o -name '*.cuh' -o -name '*.cu' \); }

bad=0
files=0
includes=0
for layer in "${!may[@]}"; do
  [ -d "$layer" ] || { echo "check_layers: layer folder $layer/ is missing (update the map in $0)"; bad=1; continue; }
  allowed=" $layer ${may[$layer]} "
  while IFS= read -r file; do
    files=$((files + 1))
    n=0
    while IFS= read -r text; do
      n=$((n + 1))
      [[ $text =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*([\"\<])([^\"\>]+)[\"\>] ]] || continue
      kind=${BASH_REMATCH[1]} inc=${BASH_REMATCH[2]}
      if [ "$kind" = "<" ]; then
        owners=${external[$inc]:-}
        if [ -n "$owners" ] && [[ " $owners " != *" $layer "* ]]; then
          echo "$file:$n: $layer includes <$inc>, which only $owners may include"
          bad=1
        fi
        continue
      fi
      includes=$((includes + 1))
      case $inc in
        */*) target=${inc%%/*} ;;
        *) target=$layer ;;  # a header next to the file (the templates include each other so)
      esac
      if [[ $allowed != *" $target "* ]]; then
        if [ -n "${may[$target]+x}" ]; then
          echo "$file:$n: $layer includes \"$inc\" of layer $target: $layer may include only ${may[$layer]:-itself}"
        else
          echo "$file:$n: $layer includes \"$inc\", which is in no layer: $layer may include only ${may[$layer]:-itself}"
        fi
        bad=1
      fi
    done <"$file"
  done < <(sources "$layer")
done

# A tracked source in a folder the map does not place (a new layer must be added above, where it belongs).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  while IFS= read -r top; do
    if [ -z "${may[$top]+x}" ] && [[ $unlayered != *" $top "* ]]; then
      echo "check_layers: $top/ holds C/C++ sources but is no layer: add it to the map in scripts/check_layers.sh"
      bad=1
    fi
  done < <(git ls-files -- '*.h' '*.c' '*.cpp' '*.cuh' '*.cu' | grep / | cut -d/ -f1 | sort -u)
fi

if [ "$bad" != 0 ]; then
  echo "check_layers: FAILED: an include points up or sideways (README \"Layout\" gives the layers)"
  exit 1
fi
echo "check_layers: $files files, $includes quoted includes, none points up"
