#!/usr/bin/env bash
# A real microphone without hardware: a PulseAudio null sink whose monitor is the default source.
# Audio played into the sink "virt" (paplay -d virt FILE.wav) is what PortAudio's "pulse"
# device captures. Needs: libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins.
#
#   scripts/pulse-mic.sh start   # start the server (idempotent), print the XDG_RUNTIME_DIR to export
#   scripts/pulse-mic.sh stop    # stop it
#   scripts/pulse-mic.sh status  # exit 0 when it answers
#
# Both this script and every client must share XDG_RUNTIME_DIR (default /tmp/soundwatch-pulse).
set -euo pipefail
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/soundwatch-pulse}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
keepalive_pid="$XDG_RUNTIME_DIR/keepalive.pid"

start() {
  if ! pactl info >/dev/null 2>&1; then
    pulseaudio -n --daemonize=yes --exit-idle-time=-1 --system=false \
      -L module-native-protocol-unix \
      -L "module-null-sink sink_name=virt rate=48000 channels=1" \
      -L module-always-sink >/dev/null 2>&1 || pulseaudio -n --daemonize=yes --exit-idle-time=-1 \
      -L module-native-protocol-unix -L "module-null-sink sink_name=virt rate=48000 channels=1" -L module-always-sink
    for _ in $(seq 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  pactl set-default-source virt.monitor
  pactl set-default-sink virt
  # A constant silent stream into the sink keeps it running, so capture starts at once
  # (without it the first block arrives only after ~1.5 s).
  if ! { [ -f "$keepalive_pid" ] && kill -0 "$(cat "$keepalive_pid")" 2>/dev/null; }; then
    nohup pacat --playback -d virt --rate=48000 --channels=1 --format=s16le /dev/zero >/dev/null 2>&1 &
    echo $! >"$keepalive_pid"
  fi
  echo "XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR"
}

stop() {
  if [ -f "$keepalive_pid" ]; then kill "$(cat "$keepalive_pid")" 2>/dev/null || true; rm -f "$keepalive_pid"; fi
  pulseaudio --kill 2>/dev/null || true
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) pactl info >/dev/null 2>&1 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
