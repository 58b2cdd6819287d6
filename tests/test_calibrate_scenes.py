"""Thresholds for a target false-alarm rate, chosen on annotated scenes (issue 11, item 6)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from soundwatch.detect import load_thresholds, resolve_view
from soundwatch.thresholds import choose_for_budget
from soundwatch.train.synthetic import class_clip

from helpers import run_soundwatch

RATE = 16000


def test_choose_for_budget_worked_by_hand():
    grid = (0.5, 0.9)
    hits = np.array([[5.0, 3.0, 0.0], [3.0, 1.0, 0.0]])  # rows: thresholds; columns: labels A, B, C
    false = np.array([[4.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    # A budget of 1 false event buys B at 0.5 (+2 hits for 1) but not A at 0.5 (+2 hits for 4). C has
    # nothing to find: it goes down only with budget that no label with events wants (10 - 4 - 1 >= 2).
    assert list(choose_for_budget(hits, false, grid, 1.0)) == [0.9, 0.5, 0.9]
    assert list(choose_for_budget(hits, false, grid, 0.0)) == [0.9, 0.9, 0.9]
    assert list(choose_for_budget(hits, false, grid, 6.0)) == [0.5, 0.5, 0.9]
    assert list(choose_for_budget(hits, false, grid, 10.0)) == [0.5, 0.5, 0.5]
    # D finds its events at both thresholds without a false alarm: nothing justifies raising it
    # (validation events the model was trained on score near 1; unseen ones lower)
    hits_d, false_d = np.array([[2.0], [2.0]]), np.zeros((2, 1))
    assert list(choose_for_budget(hits_d, false_d, grid, 0.0)) == [0.5]
    # E (+4 hits for 3 false) or F (+2 for 1) with a budget of 3: E alone finds more. A price per false
    # event cannot say so (at any price that keeps E, F comes too, and 4 > 3), so the old chooser took F.
    hits_ef, false_ef = np.array([[4.0, 2.0], [0.0, 0.0]]), np.array([[3.0, 1.0], [0.0, 0.0]])
    assert list(choose_for_budget(hits_ef, false_ef, grid, 3.0)) == [0.5, 0.9]
    assert list(choose_for_budget(hits_ef, false_ef, grid, 3.9)) == [0.5, 0.9]  # whole false events only
    assert list(choose_for_budget(hits_ef, false_ef, grid, 4.0)) == [0.5, 0.5]


def test_choose_for_budget_is_the_best_choice_by_brute_force():
    """Random small tables: no choice of thresholds within the budget finds more events; among those
    finding as many, none puts the labels with nothing to find lower, then none has fewer false events."""
    import itertools

    rng = np.random.default_rng(0)
    grid = (0.5, 0.7, 0.9)
    for _ in range(300):
        labels = int(rng.integers(1, 5))
        false = np.sort(rng.integers(0, 4, (3, labels)), axis=0)[::-1].astype(float)  # falls as t rises
        hits = np.sort(rng.integers(0, 5, (3, labels)), axis=0)[::-1].astype(float)
        budget = float(rng.integers(0, 7)) + float(rng.uniform(0, 0.99))
        got = [grid.index(t) for t in choose_for_budget(hits, false, grid, budget)]
        cols = range(labels)

        def totals(pick):
            return sum(hits[k, c] for k, c in zip(pick, cols)), sum(false[k, c] for k, c in zip(pick, cols))

        floor = sum(false[:, c].min() for c in cols)
        fits = [p for p in itertools.product(range(3), repeat=labels) if totals(p)[1] <= max(budget, floor)]
        best = max(totals(p)[0] for p in fits)
        assert totals(got)[1] <= max(budget, floor) and totals(got)[0] == best

        def key(pick):  # lower is better, after the hits
            return sum(k for k, c in zip(pick, cols) if hits[:, c].max() == 0), totals(pick)[1]

        assert key(got) == min(key(p) for p in fits if totals(p)[0] == best)


def _scene(path, rng, events: list[tuple[int, float]], seconds: float = 60.0, bursts: tuple = ()) -> None:
    """Noise at -40 dBFS with fresh 5 s clips of the tones model's classes at the given times, and 3 s
    bursts of noise 20 dB louder (a door, a fan: no event, but over the room's floor) at ``bursts``."""
    audio = (0.01 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    for at in bursts:
        start = int(at * RATE)
        audio[start : start + 3 * RATE] += (0.1 * rng.standard_normal(3 * RATE)).astype(np.float32)
    rows = ["onset\toffset\tevent_label"]
    for label, at in events:
        clip = class_clip(label, 4, RATE, 5.0, rng)
        start = int(at * RATE)
        audio[start : start + len(clip)] += 0.5 * clip / np.abs(clip).max()
        rows.append(f"{at:.3f}\t{at + 5.0:.3f}\tclass{label}")
    sf.write(path, audio, RATE, subtype="PCM_16")
    path.with_suffix(".tsv").write_text("\n".join(rows) + "\n")


def test_calibrate_on_scenes_meets_its_false_alarm_budget(tones_model, tmp_path):
    model, _ = tones_model
    rng = np.random.default_rng(5)
    val, val2, test = tmp_path / "val", tmp_path / "val2", tmp_path / "test"
    for folder, n in ((val, 2), (val2, 1), (test, 2)):  # val2: a second validation folder, same file names
        folder.mkdir()
        for k in range(n):
            _scene(folder / f"s{k}.wav", rng, [(0, 10.0), (3, 30.0)])
            _scene(folder / f"free{k}.wav", rng, [], bursts=(15.0, 40.0))
    config = tmp_path / "config.toml"
    config.write_text("[detect]\nthreshold = 0.3\nmin_duration_s = 0.0\nsmooth_windows = 1\n")
    before = run_soundwatch(
        "eval-scenes",
        str(test),
        "--model",
        str(model),
        "--backend",
        "onnx",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "before.json"),
        timeout=300,
    )
    assert before.returncode == 0, before.stderr
    out = tmp_path / "thresholds.json"
    cal = run_soundwatch(
        "calibrate",
        "thresholds",
        str(model),
        "--scenes",
        str(val),
        "--scenes",
        str(val2),
        "--false-per-hour",
        "0",
        "--backend",
        "onnx",
        "--config",
        str(config),
        "--out",
        str(out),
        timeout=300,
    )
    assert cal.returncode == 0, cal.stderr
    # the view the thresholds hold for is said, and where "auto" took it from (no own calibration yet)
    assert "calibrating for view_s 0 (the whole window; view_s auto: the model has no calibrated view" in cal.stderr
    result = json.loads(out.read_text())
    assert result["false_events"] == 0 and result["found"] > 0
    assert result["music_context_sha256"] is None  # recorded: the tones model has no music context
    # both folders pooled, the clashing names kept apart: 3 scenes with events, 2 events each
    assert result["scene_folders"] == [str(val), str(val2)] and len(result["scenes"]) == 6
    assert result["reference_events"] == 6
    assert len(load_thresholds(out, [f"class{i}" for i in range(4)], 0.5)) == 4
    after = run_soundwatch(
        "eval-scenes",
        str(test),
        "--model",
        str(model),
        "--backend",
        "onnx",
        "--config",
        str(config),
        "--thresholds",
        str(out),
        "--out",
        str(tmp_path / "after.json"),
        timeout=300,
    )
    assert after.returncode == 0, after.stderr
    b, a = (json.loads((tmp_path / f).read_text())["overall"] for f in ("before.json", "after.json"))
    assert b["false_events"] > 0, "the low threshold should raise false events on the noise (else no test)"
    assert a["false_events"] < b["false_events"] and a["found"] > 0


def test_calibrate_refuses_a_scenes_folder_given_twice(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    _scene(val / "free0.wav", np.random.default_rng(0), [], seconds=6.0)
    out = tmp_path / "thresholds.json"
    cal = run_soundwatch(
        "calibrate", "thresholds", "--scenes", str(val), "--scenes", f"{tmp_path}/./val", "--out", str(out)
    )
    assert cal.returncode == 2, cal.stderr
    assert "the same folder as --scenes" in cal.stderr and "Traceback" not in cal.stderr
    assert not out.exists()


def test_auto_thresholds_are_the_models_own_for_these_exact_weights(tiny_checkpoint, tmp_path):
    import shutil

    from soundwatch.detect import resolve_thresholds, sidecar_thresholds
    from soundwatch.models.checkpoint import file_sha256

    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_checkpoint, model)
    classes = ["dog", "rain"]
    assert resolve_thresholds("auto", model, classes, 0.5) == 0.5  # no file beside the model
    sidecar = sidecar_thresholds(model)
    sidecar.write_text(json.dumps({"checkpoint_sha256": file_sha256(model), "thresholds": {"rain": 0.9}}))
    assert list(resolve_thresholds("auto", model, classes, 0.5)) == [0.5, 0.9]
    assert resolve_thresholds("", model, classes, 0.5) == 0.5  # "" = one threshold for every label
    sidecar.write_text(json.dumps({"checkpoint_sha256": "0" * 64, "thresholds": {"rain": 0.9}}))
    assert resolve_thresholds("auto", model, classes, 0.5) == 0.5  # made for other weights: not used


def test_auto_view_is_the_one_the_models_own_calibration_records(tiny_checkpoint, tmp_path, caplog):
    """[detect] view_s = "auto": the view the model's own thresholds file was calibrated with (for these
    exact weights), else the whole window; thresholds used at another view or hop than they were
    calibrated at are named in a warning."""
    import logging
    import shutil
    from types import SimpleNamespace

    from soundwatch.detect import resolve_view, sidecar_thresholds
    from soundwatch.models.checkpoint import file_sha256

    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_checkpoint, model)
    auto = SimpleNamespace(view_s="auto", thresholds_file="auto")
    assert resolve_view(auto, model, 0.5) == 0.0  # no calibration beside the model: the whole window
    sidecar = sidecar_thresholds(model)
    made = {"checkpoint_sha256": file_sha256(model), "thresholds": {"rain": 0.9}, "detect": {"view_s": 2.5}}
    sidecar.write_text(json.dumps({**made, "hop_s": 0.5}))
    with caplog.at_level(logging.WARNING, logger="soundwatch.detect"):
        assert resolve_view(auto, model, 0.5) == 2.5 and not caplog.records
        assert resolve_view(SimpleNamespace(view_s=1.0, thresholds_file="auto"), model, 0.5) == 1.0
        assert "calibrated with view_s 2.5, hop_s 0.5; running with view_s 1, hop_s 0.5" in caplog.text
        caplog.clear()
        assert resolve_view(auto, model, 1.0) == 2.5 and "running with view_s 2.5, hop_s 1" in caplog.text
        caplog.clear()
        assert resolve_view(SimpleNamespace(view_s=1.0, thresholds_file=""), model, 1.0) == 1.0
        assert not caplog.records  # no thresholds file in use: nothing to mismatch
    sidecar.write_text(json.dumps({**made, "checkpoint_sha256": "0" * 64}))
    assert resolve_view(auto, model, 0.5) == 0.0  # made for other weights: not the model's own


def test_calibrate_for_a_room_only_raises_what_the_room_sets_off(tones_model, tmp_path):
    """--room: un-annotated recordings of a room (here: class2's sound, again and again, as a TV might
    play it) raise class2 from where --start-from put it; no other label moves, none goes down."""
    model, _ = tones_model
    rng = np.random.default_rng(7)
    room = tmp_path / "room"
    room.mkdir()
    _scene(room / "evening.wav", rng, [(2, 5.0), (2, 20.0), (2, 40.0)])
    (room / "evening.tsv").unlink()  # a room recording has no annotation
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"thresholds": {"class0": 0.9, "class1": 0.5, "class2": 0.5, "class3": 0.6}}))
    config = tmp_path / "config.toml"
    config.write_text("[detect]\nmin_duration_s = 0.0\nsmooth_windows = 1\n")
    out = tmp_path / "room.json"
    args = [str(model), "--backend", "onnx", "--config", str(config), "--false-per-hour", "0", "--out", str(out)]
    cal = run_soundwatch("calibrate", "thresholds", "--room", str(room), "--start-from", str(start), *args, timeout=300)
    assert cal.returncode == 0, cal.stderr
    result = json.loads(out.read_text())
    t = result["thresholds"]
    starts = {"class0": 0.9, "class1": 0.5, "class2": 0.5, "class3": 0.6}
    assert all(t[c] >= starts[c] for c in starts)  # never lowered
    # raised are the labels that set the room off at their start, and only those; class2 above all
    assert {c for c in starts if t[c] > starts[c]} == set(result["false_at_floor"]) >= {"class2"}
    assert t["class0"] == 0.9 and "class0" not in result["false_at_floor"]
    assert f"class2 {starts['class2']} -> {t['class2']}" in cal.stdout
    assert result["room_folders"] == [str(room)] and result["reference_events"] == 0
    assert result["event_free_hours"] == pytest.approx(60 / 3600, abs=1e-3)
    assert "of event-free audio at 0 false events an hour allows none" in cal.stderr

    # annotations in a --room folder are refused (they belong to --scenes), before any model runs
    (room / "evening.tsv").write_text("onset\toffset\tevent_label\n5.0\t10.0\tclass2\n")
    refused = run_soundwatch("calibrate", "thresholds", "--room", str(room), *args, timeout=60)
    assert refused.returncode == 2 and "give annotated recordings with --scenes" in refused.stderr
    # --start-from needs recordings to calibrate on
    alone = run_soundwatch("calibrate", "thresholds", "--start-from", "auto", "--data-dir", str(tmp_path), timeout=60)
    assert alone.returncode == 2 and "--start-from goes with --scenes or --room" in alone.stderr


def test_a_watch_list_scores_calibrates_and_detects_only_its_labels(tones_model, tmp_path, caplog):
    """[detect] labels = ["class3"]: eval-scenes scores class3's events only (class0's are background)
    and no other label's event is reported (class1, which the tones model hears in class0's tone, is);
    calibrate thresholds counts class3's events and records the list, and listen's check warns when
    the file is run for labels it did not watch. An unknown label: exit 2."""
    model, _ = tones_model
    rng = np.random.default_rng(9)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for k in range(2):
        _scene(scenes / f"s{k}.wav", rng, [(0, 10.0), (3, 30.0)])
    config = tmp_path / "config.toml"
    config.write_text('[detect]\nthreshold = 0.3\nsmooth_windows = 1\nlabels = ["class3"]\n')
    common = ("--model", str(model), "--backend", "onnx", "--config", str(config))
    every = tmp_path / "every.toml"
    every.write_text("[detect]\nthreshold = 0.3\nsmooth_windows = 1\n")
    for cfg, name in ((every, "every.json"), (config, "watch.json")):
        got = run_soundwatch(
            "eval-scenes", str(scenes), *common[:4], "--config", str(cfg), "--out", str(tmp_path / name), timeout=300
        )
        assert got.returncode == 0, got.stderr
    every_r, watch_r = (json.loads((tmp_path / n).read_text()) for n in ("every.json", "watch.json"))
    assert every_r["overall"]["reference_events"] == 4 and every_r["by_label"]["class1"]["detections"] > 0
    assert watch_r["overall"]["reference_events"] == 2 and "class0" not in watch_r["by_label"]
    assert watch_r["by_label"]["class3"]["found"] == every_r["by_label"]["class3"]["found"] > 0
    assert {e[2] for f in watch_r["per_file"] for e in f["detected"]} == {"class3"}
    assert "scoring the events of [detect] labels only (class3); the 2 events of other labels" in got.stderr

    out = tmp_path / "thresholds.json"
    cal = run_soundwatch(
        "calibrate", "thresholds", str(model), "--scenes", str(scenes), "--false-per-hour", "0", *common[2:],
        "--out", str(out), timeout=300,
    )  # fmt: skip
    assert cal.returncode == 0, cal.stderr
    result = json.loads(out.read_text())
    assert result["detect"]["labels"] == ["class3"] and result["reference_events"] == 2

    # the file run for labels it did not watch warns (their thresholds met no false alarm); for its own
    # list, or a part of it, it does not
    def warned(labels: tuple) -> bool:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            resolve_view(
                SimpleNamespace(view_s=0, thresholds_file=str(out), music_threshold=0.0, labels=labels), model, 1.0
            )
        return "was calibrated watching only ['class3']" in caplog.text

    assert warned(()) and warned(("class0", "class3"))
    assert not warned(("class3",))

    bad = tmp_path / "bad.toml"
    bad.write_text('[detect]\nlabels = ["class3", "barking", "Class 0"]\n')
    got = run_soundwatch("eval-scenes", str(scenes), *common[:4], "--config", str(bad), timeout=300)
    assert got.returncode == 2, got.stderr
    assert "detect.labels: labels the model does not know: Class 0 (did you mean class0?), barking" in got.stderr
    assert "Traceback" not in got.stderr
    bad.write_text('[detect]\nlabels = ["background"]\n')  # never an event: a watch list of it scores nothing
    got = run_soundwatch("eval-scenes", str(scenes), *common[:4], "--config", str(bad), timeout=300)
    assert got.returncode == 2 and "detect.labels: 'background' never starts an event" in got.stderr
