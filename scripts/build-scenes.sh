#!/usr/bin/env bash
# Rebuild the soundscape benchmark's scene sets (issue 11) exactly as docs/results.md made them, and check each
# against the digest recorded there (`md5sum data/scenes/SET/*.flac | md5sum`, run from the repository's root), so a number in docs/results.md can be
# reproduced on a fresh machine. Needs the background corpus (scripts/build-background-corpus.sh) and ESC-50.
#   scripts/build-scenes.sh [SET ...]            # default: every set below; one already there is only checked
#   ESC50=DIR scripts/build-scenes.sh test       # ESC-50 at 16 kHz (default ../shared/data/esc50-16k)
#   SCENES=DIR scripts/build-scenes.sh           # the sets under DIR/SET (default data/scenes/SET)
# Sets: test (the benchmark's test split), val, val-large, val-free, tune-music, judge-music, train-ctx.
# Exit 1 when a set's digest differs from the recorded one (the corpus, the mixer or ESC-50 changed: the
# recorded numbers no longer apply to it), 2 when a set is unknown or its inputs are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
esc50="${ESC50:-../shared/data/esc50-16k}"
root="${SCENES:-data/scenes}"
common=(--esc50-dir "$esc50" --duration 90)
declare -A args digest
args[test]="--split test --seed 0 --folds 1 --scenes-per-type 10 --free-scenes-per-type 6 --ebr=-6,0,6,12"
digest[test]=20d0c1c79eeaf666801fe6bdf1011536
args[val]="--split val --seed 1 --folds 2 --scenes-per-type 10 --free-scenes-per-type 6 --ebr=-6,0,6,12"
digest[val]=88a392a9be154335f646274bff7678d4
args[val-large]="--split val --seed 1 --folds 2 --scenes-per-type 10 --free-scenes-per-type 30 --ebr=-6,0,6,12"
digest[val-large]=f61abbaa38796e1b3c5612f4135c871b
args[val-free]="--split val --seed 2 --folds 2 --types speech,music,tv --scenes-per-type 0 --free-scenes-per-type 40"
digest[val-free]=cdd7035c6e4798aa1b948907fe698eea  # first recorded 2026-12-02 (commit e836d70)
args[tune-music]="--split tune --types music --scenes-per-type 0 --free-scenes-per-type 60 --seed 0"
digest[tune-music]=2c663cb761e6ea2d90bb41b014a80d3c
args[judge-music]="--split judge --types music --scenes-per-type 0 --free-scenes-per-type 120 --seed 0"
digest[judge-music]=7c9c0b676d266a2558c0f8506d03ee66
args[train-ctx]="--split train --seed 11 --scenes-per-type 10 --free-scenes-per-type 10"
digest[train-ctx]=55ebb4963cab6ce136ebfbade8fe3e92  # first recorded 2026-12-02 (commit e836d70)
order=(test val val-large val-free tune-music judge-music train-ctx)
sets=("$@")
[ ${#sets[@]} -eq 0 ] && sets=("${order[@]}")
for s in "${sets[@]}"; do
  if [ -z "${args[$s]+x}" ]; then
    echo "error: unknown scene set '$s' (known: ${order[*]})" >&2
    exit 2
  fi
done
if [ ! -f "$esc50/meta/esc50.csv" ]; then
  echo "error: no ESC-50 at $esc50 (give ESC50=DIR: ESC-50 at 16 kHz in the official layout)" >&2
  exit 2
fi
status=0
for s in "${sets[@]}"; do
  out="$root/$s"
  if [ ! -d "$out" ]; then
    log=$(mktemp)
    # shellcheck disable=SC2086  # the recorded options, word-split on purpose
    if ! python3 -m soundwatch make-scenes --out "$out" "${common[@]}" ${args[$s]} >"$log" 2>&1; then
      tail -5 "$log" >&2
      exit 2
    fi
    echo "$s: $(tail -1 "$log")"
    rm -f "$log"
  fi
  # as recorded: `md5sum data/scenes/SET/*.flac | md5sum` in the repository's root, whatever SCENES is
  got=$(md5sum "$out"/*.flac | sed "s|  $root/|  data/scenes/|" | md5sum | cut -d' ' -f1)
  want="${digest[$s]}"
  if [ "$want" = RECORD ]; then
    echo "$s: $got (no digest recorded yet)"
  elif [ "$got" = "$want" ]; then
    echo "$s: $got, as recorded"
  else
    echo "$s: $got, NOT the recorded $want: the corpus, the mixer or ESC-50 changed" >&2
    status=1
  fi
done
exit "$status"
