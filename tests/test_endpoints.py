"""Endpoints: a port out of range or a host that is not one is refused by name; IPv6 loopback works."""

from __future__ import annotations

import json
import socket

import pytest

from helpers import run_soundwatch, soundwatch
from test_cli_errors import CLIP, _refused


@pytest.mark.parametrize(
    "endpoint, needle",
    [
        ("tcp://127.0.0.1:99999", "port '99999' is not a number in 1-65535"),
        ("tcp://127.0.0.1:0", "port '0' is not a number in 1-65535"),
        ("tcp://127.0.0.1:*", "port '*' is not a number in 1-65535"),
        ("tcp://nonsense", "expected tcp://HOST:PORT"),
        ("tcp://nonsense.invalid:5599", "invalid host 'nonsense.invalid'"),
        ("tcp://[::zz]:5599", "[::zz] is not a valid IPv6 address"),
        ("127.0.0.1:5599", "expected tcp://HOST:PORT"),
    ],
)
def test_bad_endpoint_is_named(endpoint, needle):
    r = run_soundwatch("listen", "--file", str(CLIP), "--endpoint", endpoint, "--insecure", "--no-dashboard")
    _refused(r, f"endpoint {endpoint}" if "://" in endpoint else endpoint, needle)
    assert "reachable from other machines" not in r.stderr


def test_subscribe_to_an_invalid_host_is_refused():
    r = run_soundwatch("subscribe", "--endpoint", "tcp://nonsense.invalid:5599", "--count", "1")
    _refused(r, "invalid host 'nonsense.invalid'")


def test_file_that_is_a_directory(tmp_path):
    _refused(run_soundwatch("listen", "--file", str(tmp_path), "--no-dashboard"), str(tmp_path), "is a directory")


def _free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def test_ipv6_loopback_publishes(tiny_checkpoint):
    endpoint = f"tcp://[::1]:{_free_ipv6_port()}"
    listen = soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--no-dashboard",
    )
    client = soundwatch("subscribe", "--endpoint", endpoint, "--topic", "scores", "--count", "1", "--timeout", "90")
    try:
        out, err = client.communicate(timeout=120)
    finally:
        listen.terminate()
        _, listen_err = listen.communicate(timeout=30)
    assert listen.returncode == 0, listen_err
    assert client.returncode == 0, err
    (line,) = out.splitlines()
    assert json.loads(line)["topic"].startswith("scores.")
