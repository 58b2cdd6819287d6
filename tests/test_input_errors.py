"""Bad thresholds files, bad --record-input paths, SIGTERM while the model loads, and the start-up
warnings about clips and --insecure: real files, the real CLI, real sockets."""

from __future__ import annotations

import re
import signal

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from soundwatch.detect import load_thresholds
from soundwatch.errors import ConfigError

from helpers import building_elsewhere, free_endpoint, run_soundwatch, soundwatch, stderr_until
from test_cli_errors import CLIP, _refused

CLASSES = ["dog", "siren"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[0.5, 0.7]", "expected a JSON object of label: threshold"),
        ('"dog"', "got a string"),
        ("null", "got null"),
        ('{"thresholds": [0.5]}', "got a list"),
        ('{"thresholds": {"dog": "high"}}', "dog: expected a number in (0, 1], got a string 'high'"),
        ('{"thresholds": {"dog": null}}', "dog: expected a number in (0, 1], got null"),
        ('{"thresholds": {"dog": true}}', "dog: expected a number in (0, 1], got a boolean"),
        ('{"thresholds": {"dog": NaN}}', "dog: thresholds must be in (0, 1], got nan"),
        ('{"dog": Infinity}', "dog: thresholds must be in (0, 1], got inf"),
        ('{"thresholds": {"siren": 1.5}}', "siren: thresholds must be in (0, 1], got 1.5"),
    ],
)
def test_thresholds_file_that_is_not_a_table_of_numbers(tmp_path, text, needle):
    path = tmp_path / "thresholds.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_thresholds(path, CLASSES, 0.5)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_thresholds_file_not_utf8(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_bytes(b'{"dog": 0.5, "\xe9": 0.4}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_thresholds(path, CLASSES, 0.5)


def test_thresholds_list_through_the_cli(tiny_checkpoint, tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text("[0.5, 0.7]")
    r = run_soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--thresholds",
        str(path),
        "--endpoint",
        free_endpoint(),
        "--no-dashboard",
    )
    _refused(r, f"thresholds file {path}: expected a JSON object")


@pytest.mark.parametrize("case", ["directory", "missing-parent", "under-a-file", "unknown-format", "exists"])
def test_record_input_that_cannot_be_a_file(tmp_path, case):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    tap, needle = {
        "exists": (a_file.with_name("notes.wav"), "already exists; a recording is never overwritten"),
        "directory": (tmp_path, "is a directory"),
        "unknown-format": (tmp_path / "tap.mp4", "cannot write .mp4; name it .wav"),
        "missing-parent": (
            tmp_path / "no" / "such" / "tap.wav",
            f"directory {tmp_path / 'no' / 'such'} does not exist",
        ),
        "under-a-file": (a_file / "sub" / "tap.wav", f"{a_file} is not a directory"),
    }[case]
    if case == "exists":
        tap.write_text("x")
    r = run_soundwatch(
        "listen", "--file", str(CLIP), "--record-input", str(tap), "--endpoint", free_endpoint(), "--no-dashboard"
    )
    _refused(r, f"--record-input {tap}", needle)
    assert a_file.read_text() == "x"
    if case == "exists":  # yesterday's recording (here: a copy of notes.txt) is left as it was
        assert tap.read_text() == "x"


def test_sigterm_while_the_model_loads(tiny_checkpoint):
    """The publisher binds before the model loads; SIGTERM then ends cleanly: exit 0, a last status."""
    endpoint = free_endpoint()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sub.connect(endpoint)
    proc = soundwatch(
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
    try:
        assert monitor.poll(60_000), "the publisher never bound"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        proc.send_signal(signal.SIGTERM)  # bound, so the daemon is now importing torch / loading the model
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (proc.returncode, err)
        assert "Traceback" not in err and "listening on" not in err, err  # it never started the audio
        got = []  # the source's last status.<source>, then the totals on `status`
        while len(got) < 2 and sub.poll(5000):
            got.append(sub.recv_multipart())
        assert len(got) == 2, f"no last status: {got}"
        (source_topic, source_body), (topic, body) = got
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.disable_monitor()
        monitor.close()
        sub.close()
        ctx.term()
    import json

    status = json.loads(body)
    assert topic == b"status" and status["state"] == "stopped" and status["windows"] == 0
    assert source_topic.startswith(b"status.") and json.loads(source_body)["state"] == "stopped"


@pytest.mark.parametrize("case", ["symlink", "world-writable"])
def test_warns_about_clips_dir_and_insecure_bind(tmp_path, case):
    real = tmp_path / "clips"
    real.mkdir()
    if case == "symlink":
        clips = tmp_path / "link"
        clips.symlink_to(real)
        needle = f"clips directory {clips} is a symlink"
    else:
        clips = real
        clips.chmod(0o777)
        needle = f"clips directory {clips} is world-writable"
    port = free_endpoint().rsplit(":", 1)[1]
    # A model that does not exist: the run stops (exit 2) right after the start-up warnings.
    r = run_soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--model",
        str(tmp_path / "missing.safetensors"),
        "--clips-dir",
        str(clips),
        "--endpoint",
        f"tcp://0.0.0.0:{port}",
        "--insecure",
        "--event-log",
        "",
        "--no-dashboard",
    )
    assert r.returncode == 2, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("soundwatch: warning:")]
    assert len(warnings) == 2, r.stderr
    assert needle in warnings[0]
    assert "anyone on the network can read the detections" in warnings[1]


@pytest.mark.timeout(240)  # a process that waited without saying so would block the read below
def test_sigterm_while_waiting_for_another_process_to_export_the_model(tiny_checkpoint, tmp_path):
    """listen waiting for another process's export of its model (two daemons started together on a cold
    cache; a TensorRT plan takes minutes) stops at SIGTERM at once, not when the other one finishes: exit 0,
    nothing listened to, no graph made."""
    engines = tmp_path / "engines"
    with building_elsewhere(tiny_checkpoint, engines) as target:  # exporting for as long as this block lasts
        proc = soundwatch(
            "listen", "--file", str(CLIP), "--model", str(tiny_checkpoint), "--backend", "onnx",
            "--endpoint", free_endpoint(), "--no-dashboard", "--event-log", "",
            env={"SOUNDWATCH_ENGINES": str(engines)},
        )  # fmt: skip
        try:
            said = stderr_until(proc, "waiting for it", "listen did not wait for the other process's export")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)  # the lock still held: it must not wait for it any longer
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, said + err
    assert "stopped while another process was building" in err and "Traceback" not in err, err
    assert "listening on" not in said + err and not target.exists()


def test_record_input_as_flac_holds_what_the_model_heard(tmp_path):
    """--record-input room.flac: 24-bit FLAC at the model's rate, the file's audio to within 24-bit rounding
    (a room recorded for hours takes a quarter of the space a float WAV does), for `calibrate thresholds --room`."""
    import numpy as np
    import soundfile as sf

    r = run_soundwatch(
        "listen", "--file", str(CLIP), "--as-fast-as-possible", "--record-input", str(tmp_path / "room-%Y.flac"),
        "--endpoint", free_endpoint(), "--no-dashboard",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (tap,) = tmp_path.glob("room-*.flac")  # the strftime code filled in: a new name each year here
    assert re.fullmatch(r"room-20\d\d\.flac", tap.name), tap.name
    info = sf.info(str(tap))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_24", 16000, 1)
    heard, _ = sf.read(str(tap), dtype="float64")
    source, rate = sf.read(str(CLIP), dtype="float64", always_2d=True)
    assert rate == 16000 and len(heard) == len(source)
    assert np.abs(heard - source.mean(axis=1)).max() < 2**-22


@pytest.mark.parametrize("command", ["eval-scenes", "calibrate", "adapt", "train", "export"])
@pytest.mark.parametrize("where", ["under-a-file", "special-file-system"])
def test_long_jobs_refuse_an_output_they_could_not_write_before_any_work(tmp_path, command, where):
    """eval-scenes, calibrate thresholds, adapt, train (its --out is a run folder) and export run for
    minutes to hours: an --out they could not write at the end (under a file; on /proc, where no file can
    be made, even as root) is refused at once (before torch is imported), exit 2, and the check leaves
    nothing behind where it looked."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    out = {"under-a-file": a_file / "result.json", "special-file-system": "/proc/soundwatch-result.json"}[where]
    folder = tmp_path / "recordings"
    folder.mkdir()
    args = {
        "eval-scenes": ["eval-scenes", str(folder)],
        "calibrate": ["calibrate", "thresholds", "--scenes", str(folder)],
        "adapt": ["adapt", "--data-dir", str(tmp_path), "--corpus", str(folder)],
        "train": ["train", "esc50", "--data-dir", str(folder)],
        "export": ["export"],
    }[command]
    r = run_soundwatch(*args, "--out", str(out), timeout=120, env={"PYTHONPROFILEIMPORTTIME": "1"})
    needle = f"{a_file} is not a directory" if where == "under-a-file" else "cannot write in /proc"
    _refused(r, f"--out {out}", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "recordings"]
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported  # refused before torch's import (4 s on a slow machine), not after it


def test_output_check_makes_nothing_where_it_looks(tmp_path):
    from soundwatch.errors import UserError, check_output_dir, check_output_file

    check_output_file("--out", tmp_path / "new" / "result.json", make_parents=True)  # the writer makes "new"
    check_output_file("--out", tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []  # the write check's file is gone again
    with pytest.raises(UserError, match="directory .*new does not exist"):
        check_output_file("--record-input", tmp_path / "new" / "tap.wav")
    check_output_dir("--out", tmp_path / "runs" / "esc50-1")  # a run folder train will make
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "run").write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        check_output_dir("--out", tmp_path / "run")


def test_bench_of_a_file_that_is_no_model(tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_text("not a model")
    r = run_soundwatch("bench", str(bogus), "--backend", "onnx", timeout=120)
    _refused(r, f"{bogus}: not a safetensors checkpoint")


def test_eval_scenes_reads_every_annotation_first_and_names_labels_the_model_cannot_say(tmp_path):
    """A malformed annotation in the last file stops eval-scenes before any audio is run (not after hours);
    labels the model does not know are named, with the class they were likely meant as, and reported."""
    import json
    import shutil

    for name in ("a", "b"):
        shutil.copy(CLIP, tmp_path / f"{name}.flac")
    (tmp_path / "a.tsv").write_text("onset\toffset\tevent_label\n0.0\t3.0\tDog\n1.0\t2.0\tdoorbell\n")
    (tmp_path / "b.tsv").write_text("onset\toffset\tevent_label\n0.5\tsoon\tdog\n")
    r = run_soundwatch("eval-scenes", str(tmp_path), "--backend", "onnx", timeout=120)
    _refused(r, "b.tsv:2: expected onset<TAB>offset<TAB>label")
    assert "[1/2]" not in r.stderr  # refused before the first recording ran

    (tmp_path / "b.tsv").write_text("onset\toffset\tevent_label\n0.5\t4.0\tdog\n")
    out = tmp_path / "result.json"
    r = run_soundwatch("eval-scenes", str(tmp_path), "--backend", "onnx", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 annotated events have labels the model does not know" in r.stderr
    assert "'Dog' (1, first in a.tsv; did you mean dog?)" in r.stderr and "'doorbell' (1, first in a.tsv)" in r.stderr
    assert json.loads(out.read_text())["settings"]["labels_not_in_model"] == {"Dog": 1, "doorbell": 1}
