#!/usr/bin/env bash
# Install soundwatch and what it needs on a fresh Debian/Ubuntu machine (idempotent).
#   scripts/setup.sh          # the daemon: PortAudio + the package
#   scripts/setup.sh --dev    # also the test tools: PulseAudio virtual microphone, sox, tmux, pytest, librosa,
#                             # real speech and music for the VAD and music tests (asterisk-core-sounds-en-wav,
#                             # asterisk-moh-opsound-wav), and
#                             # the Mosquitto MQTT broker, ffmpeg and the GStreamer RTSP server the tests start
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0; [ "${1:-}" = "--dev" ] && dev=1

debs=(libportaudio2 libsndfile1)
[ $dev = 1 ] && debs+=(pulseaudio pulseaudio-utils libasound2-plugins sox tmux asterisk-core-sounds-en-wav asterisk-moh-opsound-wav mosquitto ffmpeg
                  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

extra=""; [ $dev = 1 ] && extra="[dev]"
python3 -m pip install -q -e ".$extra" 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -c "import soundwatch, sounddevice, torch" # fail here, not later, if the install is broken
