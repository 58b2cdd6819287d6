"""Several sources in one `soundwatch listen`: names and topics, per-source settings, one engine batching
across them, the config's [[sources]], and the dashboard's one line per source. Real files, real
ZeroMQ, the tiny CNN fitted on synthetic tones (fixture ``tones_model``, classes class0..class3)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO
from helpers import Collector, free_endpoint, run_soundwatch
from test_daemon import scene, write_config


def test_sources_get_their_own_topics_settings_and_share_the_engine(tones_model, tmp_path):
    """Three files in one process: each has its topics and status; [[sources]] overrides apply to their
    source only (gain, detection); the windows due together are classified in one engine call."""
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [0, 2], gap_s=7.0, lead_s=3.0)
    config = write_config(
        tmp_path / "c.toml",
        tmp_path / "events.jsonl",
        extra=(
            f'[[sources]]\nname = "loud"\nkind = "file"\npath = "{wav}"\n'
            f'[[sources]]\nname = "quiet"\nkind = "file"\npath = "{wav}"\ngain_db = -12.0\n'
            f'[[sources]]\nname = "deaf"\nkind = "file"\npath = "{wav}"\n'
            "[sources.detect]\nmin_level_dbfs = -0.5\n"
        ),
    )  # nothing is that loud: this source starts no event
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    r = run_soundwatch(
        "listen",
        "--as-fast-as-possible",
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
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    totals = sub.wait_stopped()
    sub.close()
    assert "loud = " in r.stderr and "quiet = " in r.stderr and "deaf = " in r.stderr
    scores = {name: sub.of(f"scores.{name}") for name in ("loud", "quiet", "deaf")}
    assert len(scores["loud"]) == len(scores["quiet"]) == len(scores["deaf"]) > 30
    for a, b in zip(scores["loud"], scores["quiet"]):  # -12 dB of gain, on that source only
        if a["level_dbfs"] > -60:
            assert b["level_dbfs"] == pytest.approx(a["level_dbfs"] - 12.0, abs=0.05)
    events = {
        name: [
            (p["label"], p["event"])
            for _, t, p in sub.messages
            if t.startswith("detection.") and t.endswith(f".{name}")
        ]
        for name in ("loud", "quiet", "deaf")
    }
    assert events["loud"] == [("class0", "start"), ("class0", "end"), ("class2", "start"), ("class2", "end")]
    assert events["deaf"] == []
    assert all(
        p["source"] == t.rsplit(".", 1)[1] for _, t, p in sub.messages if t.startswith(("scores.", "detection."))
    )
    per_source = {name: [p for p in sub.of(f"status.{name}")][-1] for name in ("loud", "quiet", "deaf")}
    assert all(s["state"] == "stopped" and s["dropped_windows"] == 0 for s in per_source.values())
    assert totals["sources"] == 3 and totals["windows"] == sum(s["windows"] for s in per_source.values())
    assert (
        totals["events"] == sum(s["events"] for s in per_source.values()) == len(events["loud"]) + len(events["quiet"])
    )
    assert totals["batch"] > 1.5  # windows of several sources per engine call


def test_same_file_twice_gets_two_names_and_a_tap_needs_one_source(tones_model, tmp_path):
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [1], gap_s=1.0, lead_s=0.5)
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    r = run_soundwatch(
        "listen",
        "--file",
        str(wav),
        "--file",
        str(wav),
        "--as-fast-as-possible",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--event-log",
        "",
    )
    assert r.returncode == 0, r.stderr
    sub.wait_stopped()
    sub.close()
    assert {t for _, t, _ in sub.messages if t.startswith("status.")} == {"status.s", "status.s_2"}
    r = run_soundwatch(
        "listen",
        "--file",
        str(wav),
        "--file",
        str(wav),
        "--record-input",
        str(tmp_path / "t.wav"),
        "--model",
        str(model),
        "--backend",
        "torch",
        "--no-dashboard",
        "--endpoint",
        free_endpoint(),
    )
    assert r.returncode == 2 and "--record-input taps one source" in r.stderr, r.stderr


def test_dashboard_shows_one_line_per_source_paged_in_80x24(tones_model, tmp_path):
    if shutil.which("tmux") is None:
        if os.environ.get("SOUNDWATCH_REQUIRE_PULSE"):
            pytest.fail("tmux missing (scripts/test.sh installs it)")
        pytest.skip("tmux not installed")
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [0, 3], gap_s=2.0, lead_s=1.0)
    files = " ".join(f"--file {wav}" for _ in range(14))  # more than one page (12 lines)
    session = f"swm{os.getpid()}"
    cmd = (
        f"cd {REPO} && python -m soundwatch listen {files} --model {model} --backend torch --hop 0.5 "
        f"--endpoint {free_endpoint()} --event-log ''"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    screens = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all(any(page in s for s in screens) for page in ("page 1/2", "page 2/2")):
            out = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
            if out.returncode:
                break
            screens.append(out.stdout)
            time.sleep(0.25)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    drawn = [s for s in screens if "14 sources" in s]
    assert drawn, screens[-1:] or "no screen"
    for screen in drawn:
        lines = screen.rstrip("\n").split("\n")
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    first = next((s for s in drawn if "page 1/2" in s), None)
    assert first is not None, drawn[-1]
    second = next((s for s in drawn if "page 2/2" in s), None)
    assert second is not None, "the second page never showed"

    def rows(screen: str) -> set[str]:  # the sources of the table's lines (not of the recent events below it)
        found = (re.match(r"│\s+(s(?:_\d+)?)\s+-?\d+ ", line) for line in screen.splitlines())
        return {m.group(1) for m in found if m}

    assert rows(first) == {"s"} | {f"s_{k}" for k in range(2, 13)}
    assert rows(second) == {"s_13", "s_14"}
