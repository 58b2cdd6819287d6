"""`soundwatch subscribe` meets messages that break the contract: it says what is wrong, counts, carries on."""

from __future__ import annotations

import json

import pytest
import zmq

from helpers import free_endpoint, run_soundwatch, soundwatch

MALFORMED = [
    ([b"scores"], "1 frame (expected 2: topic, JSON)"),
    ([b"scores", b"not json at all"], "body of topic 'scores' is not strict JSON"),
    ([b"\xff\xfescores", b"{}"], "topic is not UTF-8"),
    ([b"scores", b"[1, 2, 3]"], "body of topic 'scores' is a JSON list, not an object"),
    ([b"scores", b"{}", b"extra"], "3 frames (expected 2: topic, JSON)"),
    ([b"scores", b'{"score": NaN}'], "NaN is not a JSON number"),
    ([b"scores", b"\xc3\x28"], "body of topic 'scores' is not UTF-8"),
]


def test_subscribe_survives_malformed_messages():
    endpoint = free_endpoint()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # an XPUB sees the subscription arrive: no guessing when to send
    pub.setsockopt(zmq.LINGER, 1000)
    pub.bind(endpoint)
    client = soundwatch("subscribe", "--endpoint", endpoint, "--count", "1", "--timeout", "60")
    try:
        assert pub.poll(60_000), "the subscriber never subscribed"
        assert pub.recv() == b"\x01"  # subscribe to every topic
        for frames, _ in MALFORMED:
            pub.send_multipart(frames)
        pub.send_multipart([b"scores", json.dumps({"schema": 1, "seq": 41, "top": []}).encode()])
        out, err = client.communicate(timeout=60)
    finally:
        client.kill() if client.poll() is None else None
        pub.close()
        ctx.term()
    assert client.returncode == 0, err
    assert "Traceback" not in err, err
    assert [json.loads(line) for line in out.splitlines()] == [{"topic": "scores", "schema": 1, "seq": 41, "top": []}]
    reports = [line for line in err.splitlines() if "skipped malformed message" in line]
    assert len(reports) == len(MALFORMED), err
    for line, (_, reason) in zip(reports, MALFORMED):
        assert reason in line, (reason, line)
    assert err.splitlines()[-1] == f"soundwatch: {len(MALFORMED)} malformed messages skipped"


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--count", "-1"), "--count: a number of messages >= 0"),
        (("--timeout", "nan"), "--timeout: a number of seconds >= 0"),
        (("--timeout", "-2"), "--timeout: a number of seconds >= 0"),
    ],
)
def test_subscribe_refuses_nonsense_limits(flags, needle):
    r = run_soundwatch("subscribe", "--endpoint", free_endpoint(), *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, (r.returncode, r.stderr)
