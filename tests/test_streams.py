"""Many sources in one process, for real: an HTTP stream (ffmpeg serving one client), an RTSP stream (the
GStreamer RTSP server) and the PulseAudio virtual microphone, all in one `soundwatch listen`, with one
engine; the HTTP server is killed and restarted mid-run.

The model is the tiny CNN the trainer fits on synthetic tones (fixture ``tones_model``), hearing scenes
of fresh clips of its classes separated by silence (test_daemon.scene).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from helpers import Collector, free_endpoint, free_port, soundwatch, wait_until
from test_daemon import play, scene

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with PyGObject (python3-gi) for the GStreamer RTSP server


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        if os.environ.get("SOUNDWATCH_REQUIRE_BROKER"):
            pytest.fail(f"{', '.join(missing)} missing but the full test environment is required (scripts/test.sh)")
        pytest.skip(f"{', '.join(missing)} not installed (scripts/test.sh installs it)")


def http_server(wav: Path, port: int) -> subprocess.Popen:
    """ffmpeg serving ``wav`` at real-time pace as Ogg/FLAC to one HTTP client on 127.0.0.1:port/x.ogg."""
    return subprocess.Popen(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-i",
            str(wav),
            "-c:a",
            "flac",
            "-f",
            "ogg",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}/x.ogg",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def rtsp_server(wav: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(REPO / "tests" / "servers" / "rtsp_server.py"), str(port), str(wav)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def listening(port: int, or_serving: bool = False) -> bool:
    """Whether a socket listens on 127.0.0.1:port, read from /proc/net/tcp: connecting to see would use up
    the one client `ffmpeg -listen 1` serves. ``or_serving``: or it already has its client (a daemon that
    retries can connect, and ffmpeg stop listening, between two looks)."""
    want = f"0100007F:{port:04X}"
    states = ("0A", "01") if or_serving else ("0A",)  # TCP_LISTEN, TCP_ESTABLISHED
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == want and r.split()[3] in states for r in rows)


@pytest.mark.pulse
def test_http_and_rtsp_streams_beside_the_microphone_in_one_process(pulse_mic, tones_model, tmp_path):
    need("ffmpeg", SYSTEM_PYTHON)
    model, _ = tones_model
    long_scene = scene(tmp_path / "scene.wav", [0, 2, 1, 3, 0, 2, 1, 3], gap_s=3.0, lead_s=1.0)
    tone = scene(tmp_path / "tone.wav", [3], gap_s=0.5, lead_s=0.2)
    http_port, rtsp_port = free_port(), free_port()
    http = http_server(long_scene, http_port)
    rtsp = rtsp_server(long_scene, rtsp_port)
    assert wait_until(lambda: listening(http_port), 10), "ffmpeg did not listen"
    config = tmp_path / "config.toml"
    config.write_text(
        "[detect]\nthreshold = 0.6\nmin_duration_s = 1.0\nsmooth_windows = 3\n"
        '[events]\nlog_path = ""\n[audio]\nno_audio_timeout_s = 2.0\nreopen_backoff_max_s = 1.0\n'
    )
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    secret = "s3cr3t-pa55"
    proc = soundwatch(
        "listen",
        "--stream",
        f"http://127.0.0.1:{http_port}/x.ogg",
        "--stream",
        f"rtsp://viewer:{secret}@127.0.0.1:{rtsp_port}/audio",
        "--device",
        "pulse",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--hop",
        "0.5",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--config",
        str(config),
    )
    web, cam, mic = "127_0_0_1_x_ogg", "127_0_0_1_audio", "pulse"
    try:
        for source in (web, cam):
            got = sub.wait_for(lambda t, p, s=source: t.startswith("detection.class0.") and p["source"] == s, 60)
            assert got is not None, (
                source,
                proc.stderr.read() if proc.poll() is not None else sorted({t for _, t, _ in sub.messages}),
            )
        assert sub.wait_for(lambda t, p: t == f"scores.{mic}", 5)

        http.kill()  # the HTTP server dies mid-stream
        http.wait(timeout=10)
        lost = sub.wait_for(lambda t, p: t == f"status.{web}" and p["state"] == "no_audio", 15)
        assert lost is not None, "the dead stream was not noticed"
        play(tone).wait(timeout=20)  # the microphone keeps working meanwhile
        heard = sub.wait_for(lambda t, p: t == f"detection.class3.{mic}" and p["ts"] > lost[2]["ts"], 15)
        assert heard is not None, "the microphone stopped while a stream was down"
        http = http_server(long_scene, http_port)  # the server comes back on the same port
        assert wait_until(lambda: listening(http_port, or_serving=True), 20), "ffmpeg did not listen again"
        back = sub.wait_for(
            lambda t, p: t == f"status.{web}" and p["state"] == "running" and p["ts"] > lost[2]["ts"], 30
        )
        assert back is not None, "the stream was not reopened"
        again = sub.wait_for(
            lambda t, p: t.startswith("detection.") and p["source"] == web and p["ts"] > back[2]["ts"], 30
        )
        assert again is not None, "no detection on the stream after it came back"
        during = [
            p for _, t, p in sub.messages if t.startswith("status.") and lost[2]["ts"] <= p["ts"] <= back[2]["ts"]
        ]
        assert {p["state"] for p in during if p["source"] in (cam, mic)} == {"running"}, during
        mic_scores = [ts for ts, t, _ in sub.messages if t == f"scores.{mic}" and lost[0] <= ts <= back[0]]
        assert mic_scores and max(b - a for a, b in zip(mic_scores, mic_scores[1:])) < 1.0
        # The RTSP server freezes (SIGSTOP: its TCP connection stays open, nothing comes): a stall.
        rtsp.send_signal(signal.SIGSTOP)
        stalled = sub.wait_for(lambda t, p: t == f"status.{cam}" and p["state"] == "no_audio", 15)
        assert stalled is not None, "a stalled stream was not noticed"
        rtsp.send_signal(signal.SIGCONT)
        resumed = sub.wait_for(
            lambda t, p: t == f"status.{cam}" and p["state"] == "running" and p["ts"] > stalled[2]["ts"], 30
        )
        assert resumed is not None, "the stalled stream was not reopened"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        stderr = proc.stderr.read()
        assert code == 0, stderr[-4000:]
        sub.wait_stopped()
    finally:
        if proc.poll() is None:
            proc.kill()
        for server in (http, rtsp):
            server.kill()
        sub.close()
    seqs = [p["seq"] for _, _, p in sub.messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq gaps"
    final = [p for _, t, p in sub.messages if t == f"status.{web}"][-1]
    assert final["audio_outages"] == 1 and final["reopens"] >= 1
    assert [p for _, t, p in sub.messages if t == f"status.{cam}"][-1]["audio_outages"] == 1
    totals = sub.of("status")[-1]
    assert totals["sources"] == 3 and totals["state"] == "stopped"
    names = {p["device"] for _, t, p in sub.messages if t.startswith("status.")}
    assert f"rtsp://127.0.0.1:{rtsp_port}/audio" in names
    assert secret not in json.dumps([m[1:] for m in sub.messages]) and secret not in stderr
    assert "viewer" not in stderr


def test_stopped_sources_wait_for_their_readers_to_leave_ffmpeg(tmp_path):
    """Readers blocked in FFmpeg (servers that accept and then say nothing) leave it within their
    source's timeouts once stopped, and `join_sources`, which the daemon calls before the process
    exits, waits for them and for a file's reader under one deadline: a process exiting with a reader
    inside PyAV can die of SIGSEGV."""
    import socket

    import soundfile as sf

    from soundwatch.audio.sources import FileSource, StreamSource, join_sources

    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(16000 * 60) / 10).astype(np.float32), 16000)
    servers = [socket.socket(), socket.socket()]
    try:
        streams = []
        for server in servers:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            server.settimeout(30)
            streams.append(
                StreamSource(
                    f"http://127.0.0.1:{server.getsockname()[1]}/x.ogg", 16000, open_timeout_s=1.0, read_timeout_s=0.5
                )
            )
            streams[-1].start()
        conns = [server.accept()[0] for server in servers]  # each reader is in FFmpeg, waiting for a reply
        sources = [*streams, FileSource(tmp_path / "hum.wav")]
        sources[-1].start()
        for source in sources:
            source.stop()
        assert join_sources(sources) == []
        assert not any(t.is_alive() for s in streams for t in s._readers)
        assert not sources[-1].active
        assert all(s.last_error for s in streams)  # each gave up on its timeout, and said why
        for conn in conns:
            conn.close()
    finally:
        for server in servers:
            server.close()
