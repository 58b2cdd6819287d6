#!/usr/bin/env bash
# Install everything (scripts/setup.sh --dev), check lint and format (ruff), start the PulseAudio virtual
# microphone, run the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k live
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/soundwatch-pulse}"
export SOUNDWATCH_REQUIRE_PULSE=1 SOUNDWATCH_REQUIRE_BROKER=1  # missing tools fail the tests, not skip them
scripts/pulse-mic.sh start >/dev/null
trap 'scripts/pulse-mic.sh stop' EXIT
python3 -m ruff check soundwatch tests bench scripts  # lint ([tool.ruff] in pyproject.toml)
python3 -m ruff format --check soundwatch tests bench scripts  # formatted as `ruff format` leaves it
# two workers (pytest-xdist): the real-time tests wait on audio, brokers and streams while the other worker
# computes; every test on the virtual microphone runs on one worker (tests/conftest.py, --dist loadgroup)
python3 -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
