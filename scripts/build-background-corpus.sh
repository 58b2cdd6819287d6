#!/usr/bin/env bash
# Rebuild the background corpus (issue 11): install the Debian packages of data/background-manifest.csv,
# convert their music and voice recordings to 16 kHz mono FLAC under data/background/ (gitignored),
# and rewrite the manifest. Needs root for apt-get (run `apt-get update` once on a fresh machine).
#   scripts/build-background-corpus.sh [--out DIR] [--manifest CSV] [--packages a,b] [--no-install]
# Fails (exit 2) naming the package that cannot be found or installed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
exec env PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python3 -m soundwatch.data.corpus "$@"
