"""A real RTSP server for the stream tests: the GStreamer RTSP server (Debian's gir1.2-gst-rtsp-server-1.0
and python3-gi) serving a WAV file's audio as RTP L16 at real-time pace on rtsp://127.0.0.1:PORT/audio.

Run with the system Python that has PyGObject: /usr/bin/python3 tests/servers/rtsp_server.py PORT FILE.wav
Prints "ready" once it listens. Every client gets the file from its start (the media is not shared).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, wav = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f'( filesrc location="{wav}" ! wavparse ! audioconvert ! audioresample '
    "! audio/x-raw,format=S16BE,rate=16000,channels=1 ! rtpL16pay name=pay0 pt=96 )"
)
factory.set_shared(False)
server.get_mount_points().add_factory("/audio", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
