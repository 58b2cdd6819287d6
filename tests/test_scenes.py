"""The soundscape benchmark: event metrics worked out by hand, the seeded mixer (repeatable, at the
asked ratio, measured by RMS), the background-corpus script failing clearly, and one end-to-end
``eval-scenes`` run of the daemon's own path with the shipped model over a generated scene.

The mixer tests use ESC-50 clips of folds 4-5 as a stand-in background corpus (real audio that is
always here); the real corpus (scripts/build-background-corpus.sh) needs Debian packages.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from soundwatch.data import scenes
from soundwatch.data.corpus import MANIFEST_FIELDS, installed_version
from soundwatch.errors import UserError
from soundwatch.evaluate.scenes import (
    Event,
    count_interval,
    event_based_hits,
    event_free_seconds,
    false_labels_line,
    max_matching,
    missed_labels_line,
    read_annotations,
    recall_interval,
    report,
    score_file,
    summarise,
    table,
)
from tests.conftest import ESC50_DIR, REPO
from tests.helpers import run_soundwatch

ROOSTER = "1-26806-A-1.flac"  # fold 1; the shipped model: rooster, p = 0.98 on the clip alone


def test_event_metrics_worked_by_hand():
    refs = [Event(10, 12, "dog"), Event(30, 35, "rain"), Event(60, 62, "siren")]
    ests = [
        Event(10.5, 14, "dog"),  # onset 0.5 s late: event-based hit, found
        Event(37, 40, "rain"),  # 7 s late: no event-based hit, but within 5 s of the offset: found
        Event(61, 63, "dog"),  # wrong label during the siren: neither found nor false (not event-free)
        Event(80, 82, "siren"),
    ]  # on an event-free stretch: a false event
    s = score_file("a", "speech", 100.0, refs, ests, collar_s=1.0, late_s=5.0, pre_s=1.0)
    assert s.found == [True, True, False]
    assert s.correct == [True, True, False, False]
    assert s.eb_tp == 1
    # busy: [9, 17] + [29, 40] + [59, 67] = 27 s; free 73 s
    assert s.free_s == pytest.approx(73.0)
    assert s.false_labels == ["siren"]
    m = summarise([s])
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (m["eb_precision"], m["eb_recall"]) == (pytest.approx(1 / 4), pytest.approx(1 / 3))
    assert m["eb_f1"] == pytest.approx(2 / 7)
    assert m["false_per_hour"] == pytest.approx(1 / (73 / 3600))
    # start errors of the found events: dog +0.5 s, rain +7 s; within 0.5 s: 1 of 2
    assert s.start_errors == [pytest.approx(0.5), pytest.approx(7.0)]
    assert m["start_within_0_5s"] == pytest.approx(0.5)
    assert m["start_error_median_s"] == pytest.approx(3.75)
    # with sed_eval's offset criterion (within max(1 s, 50% of 2 s) of 12 s): 14 s misses
    assert event_based_hits(refs, ests, 1.0, offset_ratio=0.5) == 0
    assert event_based_hits(refs, [Event(10.5, 12.9, "dog")], 1.0, offset_ratio=0.5) == 1


def test_event_matching_is_one_to_one_and_maximal():
    refs = [Event(0.0, 1.0, "dog"), Event(1.5, 2.5, "dog")]
    # e1 may take either reference, e2 only the first: a greedy pass in order finds 1, the optimum 2
    ests = [Event(1.0, 2.0, "dog"), Event(0.2, 1.0, "dog")]
    assert event_based_hits(refs, ests, 1.0) == 2
    assert event_based_hits(refs[:1], ests, 1.0) == 1  # two detections, one reference: one hit
    assert max_matching({0: [0], 1: [0], 2: [0, 1]}) == 2


def test_per_type_report_and_ebr_recall():
    a = score_file("a", "music", 60.0, [Event(10, 11, "dog", 0.0), Event(30, 31, "cat", 6.0)], [Event(12, 14, "dog")])
    b = score_file("b", "quiet", 60.0, [Event(10, 11, "dog", 0.0)], [])
    r = report([a, b])
    assert set(r["by_type"]) == {"music", "quiet"}
    assert r["by_type"]["music"]["recall_by_ebr"] == {
        "0": {"events": 1, "recall": 1.0},
        "6": {"events": 1, "recall": 0.0},
    }
    assert r["overall"]["recall_by_ebr"]["0"] == {"events": 2, "recall": 0.5}
    assert r["by_type"]["quiet"]["precision"] is None  # no detection: precision undefined, not 0 or 1
    assert false_labels_line(r) == "false events by label: none"
    c = score_file("c", "tv", 60.0, [], [Event(5, 7, "frog"), Event(20, 22, "frog"), Event(40, 42, "siren")])
    assert (
        false_labels_line(report([a, b, c])) == "false events by label (5 most): frog 2, siren 1 (tv: frog 2, siren 1)"
    )
    assert event_free_seconds([Event(10, 11, "dog"), Event(12, 13, "cat")], 60.0, 1.0, 5.0) == pytest.approx(51.0)


def test_intervals_say_how_little_a_small_count_shows():
    """Recall: Wilson's score interval (worked by its formula); false events an hour: the exact Poisson
    interval (the Garwood table: 0 -> 0-3.689, 1 -> 0.0253-5.572, 10 -> 4.795-18.39), over free hours."""
    z = 1.959963984540054
    for k, n in [(5, 10), (57, 81), (0, 12)]:
        p = k / n
        centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = recall_interval(k, n)
        assert (lo, hi) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    assert recall_interval(0, 0) is None
    assert count_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert count_interval(1) == pytest.approx((0.0253, 5.572), abs=1e-3)
    assert count_interval(10) == pytest.approx((4.795, 18.39), abs=1e-2)
    from scipy.stats import binomtest, chi2  # the library's own intervals, which scenes.py computes without it

    for k, n in [(0, 1), (1, 1), (3, 7), (47, 203), (203, 203)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert recall_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    for k in (1, 2, 7, 40):
        assert count_interval(k) == pytest.approx((chi2.ppf(0.025, 2 * k) / 2, chi2.ppf(0.975, 2 * k + 2) / 2))
    # no false event in a quarter hour of event-free audio: up to 14.8 an hour is not ruled out
    quiet = report([score_file("q", "quiet", 900.0, [], [])])["by_type"]["quiet"]
    assert quiet["false_per_hour"] == 0.0
    assert quiet["false_per_hour_ci95"] == pytest.approx((0.0, 3.689 * 4), abs=1e-2)
    r = report([score_file("a", "music", 60.0, [Event(10, 11, "dog", 0.0)], [Event(12, 14, "dog")])])
    assert "| 100.0 | 20.7-100.0 |" in table(r)  # one event of one found: Wilson 20.7%-100%


def test_per_label_counts_worked_by_hand():
    """Which labels are missed, and which fire falsely: per label, summed over files."""
    refs = [Event(10, 12, "dog"), Event(30, 35, "rain"), Event(60, 62, "siren")]
    ests = [Event(10.5, 14, "dog"), Event(37, 40, "rain"), Event(61, 63, "dog"), Event(80, 82, "siren")]
    a = score_file(
        "a", "speech", 100.0, refs, ests
    )  # found: dog, rain; siren missed; dog at 61 wrong; siren at 80 false
    b = score_file("b", "music", 60.0, [Event(10, 11, "dog"), Event(30, 31, "cat")], [Event(12, 14, "dog")])
    r = report([a, b])
    assert r["by_label"]["dog"] == {
        "events": 2, "found": 2, "detections": 3, "correct": 2, "false_events": 0, "recall": 1.0, "precision": 2 / 3,
    }  # fmt: skip
    assert r["by_label"]["siren"] == {
        "events": 1, "found": 0, "detections": 1, "correct": 0, "false_events": 1, "recall": 0.0, "precision": 0.0,
    }  # fmt: skip
    assert r["by_label"]["cat"]["recall"] == 0.0 and r["by_label"]["cat"]["precision"] is None
    assert list(r["by_label"]) == ["cat", "dog", "rain", "siren"]
    assert missed_labels_line(r) == (
        "events found by label (2 of 2 labels with misses, fewest found first): cat 0/1, siren 0/1"
    )
    all_found = report([score_file("c", "quiet", 30.0, [Event(1, 2, "dog")], [Event(1, 2, "dog")])])
    assert missed_labels_line(all_found) == "events found by label: every annotated event was found"


def test_read_annotations_dcase_tsv(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("filename\tonset\toffset\tevent_label\nx.wav\t3.5\t4.0\tdog\nx.wav\t1.0\t2.25\tcat\n")
    assert read_annotations(path) == [Event(1.0, 2.25, "cat"), Event(3.5, 4.0, "dog")]
    path.write_text("1.0\t2.0\tsiren\n")
    assert read_annotations(path) == [Event(1.0, 2.0, "siren")]
    for bad in ("nan\t2.0\tsiren", "1.0\tinf\tsiren", "-0.5\t2.0\tsiren"):
        path.write_text(f"1.0\t2.0\tdog\n{bad}\n")
        with pytest.raises(UserError, match=r"x.tsv:2: onset and offset must be seconds"):
            read_annotations(path)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """A manifest whose "speech" and "music" are real ESC-50 clips of folds 4 and 5 (test split)."""
    with open(ESC50_DIR / "meta" / "esc50.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] in ("4", "5")]
    speech = [r for r in rows if r["category"] in ("laughing", "coughing")][:6]
    music = [r for r in rows if r["category"] in ("church_bells", "chirping_birds")][:4]
    manifest = tmp_path_factory.mktemp("corpus") / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        for kind, sel in (("speech", speech), ("music", music)):
            for r in sel:
                w.writerow(
                    {
                        "split": "test",
                        "type": kind,
                        "package": f"esc50-fold{r['fold']}",
                        "version": "",
                        "licence": "CC-BY-NC",
                        "source_path": r["filename"],
                        "duration_s": "5.0",
                        "source_rate": 16000,
                        "path": r["filename"].replace(".wav", ".flac"),
                    }
                )
    return ESC50_DIR / "audio", manifest


def _make(out, corpus, seed, types=("speech", "music", "tv", "quiet")):
    return scenes.make_scenes(
        out,
        corpus[0],
        corpus[1],
        ESC50_DIR,
        "test",
        [1],
        list(types),
        1,
        1,
        seed,
        scenes.MixOptions(duration_s=30.0, gap_s=(4.0, 6.0), lead_in_s=(2.0, 3.0)),
    )


def test_mixer_repeatable_by_seed(tmp_path, tiny_corpus):
    metas = _make(tmp_path / "a", tiny_corpus, seed=3)
    _make(tmp_path / "b", tiny_corpus, seed=3)
    _make(tmp_path / "c", tiny_corpus, seed=4)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 8 * 3 and sum(len(m["events"]) for m in metas) >= 4
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    differ = [
        n
        for n in names
        if n.endswith(".flac") and (tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes()
    ]
    assert len(differ) == 8
    for meta in metas:  # the TSV is the meta's events; event-free scenes have none
        refs = read_annotations(tmp_path / "a" / f"{meta['scene']}.tsv")
        assert [(r.onset, r.label) for r in refs] == [(round(e["onset"], 3), e["label"]) for e in meta["events"]]
        assert ("free" in meta["scene"]) == (not refs)
        for a, b in zip(refs, refs[1:]):
            assert b.onset - a.offset >= 4.0  # never overlapping, with gaps


def test_make_scenes_never_writes_into_a_folder_that_holds_files(tmp_path):
    """A second run into the same folder would overwrite files and leave the first run's extra scenes
    beside the second's: make-scenes refuses, exit 2, and the folder is left as it was."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "test-music-ev-000.flac").write_bytes(b"a user's own recording")
    got = run_soundwatch(
        "make-scenes", "--out", str(out), "--esc50-dir", str(ESC50_DIR), "--corpus", str(tmp_path / "none"), timeout=60
    )
    assert got.returncode == 2, got.stderr
    assert f"--out {out}: already holds 1 file(s) (test-music-ev-000.flac)" in got.stderr
    assert "Traceback" not in got.stderr
    assert [p.name for p in out.iterdir()] == ["test-music-ev-000.flac"]
    assert (out / "test-music-ev-000.flac").read_bytes() == b"a user's own recording"


@pytest.mark.parametrize("kind", ["speech", "music", "tv", "quiet"])
def test_mixer_places_events_at_the_asked_ratio(tiny_corpus, kind):
    backgrounds = scenes.Backgrounds(tiny_corpus[0], tiny_corpus[1], "test")
    rng = np.random.default_rng(7)
    n = 40 * scenes.SAMPLE_RATE
    background, _, level = backgrounds.make(kind, rng, n)
    if kind == "quiet":
        assert level == pytest.approx(scenes.QUIET_DBFS, abs=0.01)
    clips = scenes.esc50_clips(ESC50_DIR, [1])
    pick = itertools.cycle([c for c in clips if c["path"].name in (ROOSTER, "1-100032-A-0.flac", "1-13571-A-46.flac")])
    opts = scenes.MixOptions(ebrs_db=(-6.0, 0.0, 12.0), gap_s=(3.0, 4.0), lead_in_s=(2.0, 2.5))
    mix, events = scenes.place_events(rng, background, lambda: next(pick), opts)
    assert len(events) >= 3
    added = mix - background
    mask = np.zeros(n, bool)
    for e in events:
        a, b = round(e["onset"] * scenes.SAMPLE_RATE), round(e["offset"] * scenes.SAMPLE_RATE)
        mask[a:b] = True
        measured = scenes.db(added[a:b]) - scenes.db(background[a:b])
        assert measured == pytest.approx(e["ebr_db"], abs=0.01), e
        assert scenes.db(added[a : a + scenes.FRAME]) > scenes.db(added[a:b]) - 50  # onset at the active part
    assert sorted(e["ebr_db"] for e in events[:3]) == [-6.0, 0.0, 12.0]  # the ratios are used in turn
    assert not np.any(added[~mask])  # nothing outside the annotated spans


def test_silence_scenes_are_digital_silence_with_events_at_their_ratio_to_a_quiet_room(tiny_corpus):
    """make-scenes --types silence: a gated input. Nothing but the events, each at its ratio to QUIET_DBFS."""
    backgrounds = scenes.Backgrounds(tiny_corpus[0], tiny_corpus[1], "test", ("silence",))
    rng = np.random.default_rng(3)
    background, used, _ = backgrounds.make("silence", rng, 30 * scenes.SAMPLE_RATE)
    assert not np.any(background) and used == []
    clips = itertools.cycle([c for c in scenes.esc50_clips(ESC50_DIR, [1]) if c["path"].name == ROOSTER])
    mix, events = scenes.place_events(
        rng, background, lambda: next(clips), scenes.MixOptions(ebrs_db=(20.0, 30.0), gap_s=(3, 4), lead_in_s=(2, 3))
    )
    assert len(events) >= 2
    for e in events:
        a, b = round(e["onset"] * scenes.SAMPLE_RATE), round(e["offset"] * scenes.SAMPLE_RATE)
        assert scenes.db(mix[a:b]) == pytest.approx(scenes.QUIET_DBFS + e["ebr_db"], abs=0.01)
    assert sorted({e["ebr_db"] for e in events}) == [20.0, 30.0]


def test_quiet_scenes_with_everyday_events_are_as_loud_as_over_speech(tmp_path, tiny_corpus):
    """--quiet-events everyday: a quiet scene's events stand at their ratio to a level drawn where speech
    and music sit (the meta says which), not to the -55 dBFS hiss; faint (the default) is the hiss."""
    everyday = scenes.MixOptions(duration_s=30.0, gap_s=(4.0, 6.0), lead_in_s=(2.0, 3.0), quiet_events="everyday")
    faint = scenes.MixOptions(duration_s=30.0, gap_s=(4.0, 6.0), lead_in_s=(2.0, 3.0))
    args = (tiny_corpus[0], tiny_corpus[1], ESC50_DIR, "test", [1], ["quiet"], 2, 0, 5)
    loud = scenes.make_scenes(tmp_path / "everyday", *args, everyday)
    soft = scenes.make_scenes(tmp_path / "faint", *args, faint)
    for meta in loud:
        ref = meta["event_reference_dbfs"]
        assert scenes.BACKGROUND_DBFS[0] <= ref <= scenes.BACKGROUND_DBFS[1]
        mix = scenes.read_audio(tmp_path / "everyday" / f"{meta['scene']}.flac")
        assert meta["events"]
        for e in meta["events"]:
            a, b = round(e["onset"] * scenes.SAMPLE_RATE), round(e["offset"] * scenes.SAMPLE_RATE)
            # the hiss is 20 dB or more under the event: the span's level is the event's (16-bit FLAC), less
            # what the whole scene was scaled down by where a loud event's peak would have clipped
            assert scenes.db(mix[a:b]) == pytest.approx(ref + e["ebr_db"] + meta["scaled_db"], abs=0.1), e
    for meta, twin in zip(soft, loud):  # the same scenes, only the events' gains differ
        assert "event_reference_dbfs" not in meta
        assert [(e["clip"], e["onset"], e["ebr_db"]) for e in meta["events"]] == [
            (e["clip"], e["onset"], e["ebr_db"]) for e in twin["events"]
        ]
        mix = scenes.read_audio(tmp_path / "faint" / f"{meta['scene']}.flac")
        for e in meta["events"]:
            a, b = round(e["onset"] * scenes.SAMPLE_RATE), round(e["offset"] * scenes.SAMPLE_RATE)
            event_db = scenes.QUIET_DBFS + e["ebr_db"]  # event and hiss add as powers
            expected = 10 * np.log10(10 ** (event_db / 10) + 10 ** (scenes.QUIET_DBFS / 10))
            assert scenes.db(mix[a:b]) == pytest.approx(expected, abs=1.0), e
    got = run_soundwatch(
        "make-scenes", "--out", str(tmp_path / "x"), "--esc50-dir", str(ESC50_DIR), "--quiet-events", "loud", timeout=60
    )
    assert got.returncode == 2 and "--quiet-events 'loud': choose faint or everyday" in got.stderr, got.stderr
    got = run_soundwatch(
        "make-scenes", "--out", str(tmp_path / "x"), "--esc50-dir", str(ESC50_DIR), "--types", "speech,music",
        "--quiet-events", "everyday", timeout=60,
    )  # fmt: skip
    assert got.returncode == 2 and "--types 'speech,music' makes none; add quiet to --types" in got.stderr
    assert not (tmp_path / "x").exists()


def test_a_music_only_split_makes_music_scenes_and_refuses_speech(tmp_path, tiny_corpus):
    """The judge split holds music only: event-free music scenes are made from it; a type that needs
    speech is refused naming the split, before anything is written."""
    with open(tiny_corpus[1], newline="") as f:
        rows = [{**r, "split": "judge"} for r in csv.DictReader(f) if r["type"] == "music"]
    manifest = tmp_path / "judge.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    opts = scenes.MixOptions(duration_s=20.0)
    metas = scenes.make_scenes(
        tmp_path / "j", tiny_corpus[0], manifest, ESC50_DIR, "judge", [2], ["music"], 0, 2, 0, opts
    )
    assert [m["scene"] for m in metas] == ["judge-music-free-000", "judge-music-free-001"]
    assert all(not m["events"] for m in metas)
    with pytest.raises(UserError, match="split 'judge' has no speech"):
        scenes.make_scenes(tmp_path / "k", tiny_corpus[0], manifest, ESC50_DIR, "judge", [2], ["tv"], 0, 1, 0, opts)
    assert not (tmp_path / "k").exists()


def test_corpus_table_keeps_splits_apart_and_the_judge_and_tune_splits_are_music():
    from soundwatch.data.corpus import RESERVED, SOURCES, SPLITS

    split_of = {}
    for src in SOURCES:
        assert src.split in SPLITS and src.package not in RESERVED
        assert split_of.setdefault(src.package, src.split) == src.split  # a package is in one split only
    for split in ("judge", "tune"):
        music_only = [s for s in SOURCES if s.split == split]
        assert music_only and all(s.type == "music" for s in music_only)


def test_active_span_trims_zero_padding():
    x, _ = sf.read(str(ESC50_DIR / "audio" / ROOSTER), dtype="float32")
    a, b = scenes.active_span(x)
    assert 0 <= a < b <= len(x) and b - a < len(x)  # this clip is zero-padded
    assert not np.any(x[b:]) or scenes.db(x[b:]) < scenes.db(x[a:b]) - 40
    burst = np.zeros(16000)
    burst[4000:6400] = np.sin(np.arange(2400) * 0.3)  # on 10 ms frame boundaries: exact
    assert scenes.active_span(burst) == (4000, 6400)


def _corpus_script(*args, env=None):
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "build-background-corpus.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(
    subprocess.run(["which", "dpkg-query"], capture_output=True).returncode != 0,
    reason="the corpus is built from Debian packages",
)
def test_corpus_script_fails_naming_the_missing_package(tmp_path):
    out = ["--out", str(tmp_path / "bg"), "--manifest", str(tmp_path / "m.csv")]
    got = _corpus_script(*out, "--packages", "soundwatch-no-such-package-xyz")
    assert got.returncode == 2
    assert "soundwatch-no-such-package-xyz" in got.stderr and "not found" in got.stderr
    assert not (tmp_path / "m.csv").exists()
    got = _corpus_script(*out, env={"SOUNDWATCH_CORPUS_PACKAGES": "soundwatch-no-such-package-abc"})
    assert got.returncode == 2 and "soundwatch-no-such-package-abc" in got.stderr
    got = _corpus_script(*out, "--packages", "wesnoth-1.16-music")
    assert got.returncode == 2 and "reserved" in got.stderr


def test_a_scenes_folder_that_is_a_file_or_missing_is_named_so(tmp_path):
    from soundwatch.scenes_cli import annotated_files, sound_files

    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(UserError, match="notes.txt: is a file, not a folder"):
        annotated_files(notes)
    with pytest.raises(UserError, match="--room .*nowhere: no such directory"):
        sound_files(tmp_path / "nowhere", "--room")


@pytest.mark.skipif(
    subprocess.run(["which", "dpkg-query"], capture_output=True).returncode != 0
    or installed_version("asterisk-moh-opsound-wav") is None,
    reason="needs the Debian package asterisk-moh-opsound-wav (scripts/setup.sh --dev installs it)",
)
def test_corpus_script_rebuilding_one_package_keeps_the_other_rows_and_refuses_a_foreign_manifest(tmp_path):
    """--packages rebuilds that package's rows in place: the others stay, in the table's order; a --manifest
    path holding anything but a manifest is refused before any work, intact."""
    from soundwatch.data.corpus import SOURCES

    manifest = tmp_path / "m.csv"
    first = SOURCES[0].package  # before the music package in the table
    assert first != "asterisk-moh-opsound-wav"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        stale = dict.fromkeys(MANIFEST_FIELDS, "x") | {"package": "asterisk-moh-opsound-wav", "path": "stale.flac"}
        writer.writerow(stale)  # an earlier build's row of the package rebuilt: replaced
        writer.writerow(dict.fromkeys(MANIFEST_FIELDS, "y") | {"package": first, "path": "kept.flac"})
    out = ["--out", str(tmp_path / "bg"), "--manifest", str(manifest), "--no-install"]
    got = _corpus_script(*out, "--packages", "asterisk-moh-opsound-wav")
    assert got.returncode == 0, got.stderr
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"] == "kept.flac" and all(r["package"] == "asterisk-moh-opsound-wav" for r in rows[1:])
    assert len(rows) > 1 and "stale.flac" not in {r["path"] for r in rows}
    assert all((tmp_path / "bg" / r["path"]).is_file() for r in rows[1:])

    notes = tmp_path / "notes.csv"
    notes.write_text("date,what\n2026-12-02,my own notes\n")
    got = _corpus_script(
        "--out", str(tmp_path / "bg2"), "--manifest", str(notes), "--packages", "asterisk-moh-opsound-wav"
    )
    assert got.returncode == 2 and "not a background manifest" in got.stderr, got.stderr
    assert notes.read_text() == "date,what\n2026-12-02,my own notes\n" and not (tmp_path / "bg2").exists()


def test_eval_scenes_end_to_end_with_the_shipped_model(tmp_path):
    """A quiet room with a rooster at +30 dB (found) and one room-tone file without meta (type unknown)."""
    rate = scenes.SAMPLE_RATE
    rng = np.random.default_rng(0)
    x, _ = sf.read(str(ESC50_DIR / "audio" / ROOSTER), dtype="float32")
    a, b = scenes.active_span(x)
    room = scenes.room_tone(rng, 20 * rate, -55.0)  # the rooster from 8 s, 7 s of room after it
    at = 8 * rate
    event = scenes.set_level(x[a:b].astype(np.float64), -55.0 + 30.0)
    room[at : at + len(event)] += event
    sf.write(str(tmp_path / "room.flac"), room.astype(np.float32), rate, subtype="PCM_16")
    onset, offset = at / rate, (at + len(event)) / rate
    (tmp_path / "room.tsv").write_text(f"onset\toffset\tevent_label\n{onset:.3f}\t{offset:.3f}\trooster\n")
    (tmp_path / "room.json").write_text(
        json.dumps(
            {
                "background_type": "quiet",
                "events": [{"onset": onset, "offset": offset, "label": "rooster", "ebr_db": 30.0}],
            }
        )
    )
    # a user's own recording may be an MP3: read like the others
    sf.write(str(tmp_path / "plain.mp3"), scenes.room_tone(rng, 8 * rate, -50.0).astype(np.float32), rate)
    (tmp_path / "plain.tsv").write_text("onset\toffset\tevent_label\n")
    (tmp_path / "not-annotated.flac").write_bytes((tmp_path / "room.flac").read_bytes())
    (tmp_path / "r.json").write_text('{"an": "earlier report"}')  # a JSON report of an earlier run: replaced
    got = run_soundwatch(
        "eval-scenes",
        str(tmp_path),
        "--backend",
        "torch",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "r.json"),
        timeout=180,
    )
    assert got.returncode == 0, got.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    from soundwatch.config import load_settings

    assert r["settings"]["files"] == 2 and [f["file"] for f in r["per_file"]] == ["plain.mp3", "room.flac"]
    assert r["by_label"]["rooster"]["events"] == 1 and r["by_label"]["rooster"]["found"] == 1
    assert "events found by label: every annotated event was found" in got.stdout
    defaults = json.loads(json.dumps(vars(load_settings(REPO / "config.toml").detect)))  # tuples -> lists
    assert defaults.pop("view_s") == "auto" and r["settings"]["detect"]["view_s"] == 2.5  # the model's own
    assert r["settings"]["detect"] == {**r["settings"]["detect"], **defaults}
    quiet = r["by_type"]["quiet"]
    assert quiet["reference_events"] == 1 and quiet["recall"] == 1.0
    assert quiet["recall_by_ebr"] == {"30": {"events": 1, "recall": 1.0}}
    room_file = next(f for f in r["per_file"] if f["file"] == "room.flac")
    roosters = [d for d in room_file["detected"] if d[2] == "rooster"]
    assert roosters and onset <= roosters[0][0] <= offset + 5.0  # event times are in file seconds
    assert r["by_type"]["unknown"]["reference_events"] == 0
    assert r["by_type"]["unknown"]["event_free_hours"] == pytest.approx(8 / 3600, abs=1e-4)
    assert "| quiet |" in got.stdout and "| unknown |" in got.stdout and "| all |" in got.stdout

    # scripts/replay_detect.py records the same windows once and replays only the detector: the same events
    def replay_detect(*args: str) -> subprocess.CompletedProcess:
        script = [sys.executable, str(REPO / "scripts" / "replay_detect.py"), str(tmp_path), "--backend", "torch"]
        cmd = script + ["--cache", str(tmp_path / "cache"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)

    replayed = replay_detect("--out", str(tmp_path / "replay.json"))
    assert replayed.returncode == 0, replayed.stderr
    again = json.loads((tmp_path / "replay.json").read_text())
    keys = ("reference_events", "detected_events", "found", "eb_true_positives", "false_events", "start_within_0_5s")
    assert {k: again["overall"][k] for k in keys} == {k: r["overall"][k] for k in keys}
    assert list(again["by_type"]) == list(r["by_type"]) and again["alert_delay_median_s"] is not None
    # and says, scene by scene, what was detected and which detections were false, as eval-scenes does
    assert [(f["file"], f["detected"], f["false_labels"]) for f in again["per_file"]] == [
        (f["file"], f["detected"], f["false_labels"]) for f in r["per_file"]
    ]
    assert sum(len(f["false_labels"]) for f in again["per_file"]) == again["overall"]["false_events"]
    assert len(list((tmp_path / "cache").glob("*-torch.pkl"))) == 1

    # --calibrate chooses from the recording what `calibrate thresholds --scenes` chooses from the audio
    calibrated = replay_detect("--calibrate", str(tmp_path / "from-cache.json"))
    assert calibrated.returncode == 0, calibrated.stderr
    direct = run_soundwatch(
        "calibrate", "thresholds", "--scenes", str(tmp_path), "--backend", "torch", "--threads", "1", "--out",
        str(tmp_path / "direct.json"), timeout=180,
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("from-cache.json", "direct.json"))
    keys = ("thresholds", "found", "false_events", "event_free_hours", "detect", "hop_s", "checkpoint_sha256")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["thresholds"]["rooster"] >= 0.5 and a["found"] == 1


def test_eval_scenes_refuses_events_after_the_recording_ends(tmp_path):
    """An annotation in milliseconds (or another recording's) puts events after the end: an error naming
    the file, before any model runs, instead of events silently counted as missed."""
    x, rate = sf.read(str(ESC50_DIR / "audio" / ROOSTER), dtype="float32")  # 5 s
    sf.write(str(tmp_path / "kitchen.flac"), x, rate)
    (tmp_path / "kitchen.tsv").write_text("onset\toffset\tevent_label\n1.0\t2.0\trooster\n1000\t2000\trooster\n")
    got = run_soundwatch(
        "eval-scenes", str(tmp_path), "--backend", "torch", "--out", str(tmp_path / "r.json"), timeout=60
    )
    assert got.returncode == 2, got.stderr
    assert "kitchen.tsv: 1 event(s) start after the recording ends (kitchen.flac lasts 5.00 s)" in got.stderr
    assert "rooster at 1000-2000 s" in got.stderr and "Traceback" not in got.stderr
    assert not (tmp_path / "r.json").exists()


def test_eval_scenes_refuses_an_annotation_without_its_recording(tmp_path):
    """A .tsv whose recording is missing (or ambiguous) is an error naming it, before any model loads."""
    x, rate = sf.read(str(ESC50_DIR / "audio" / ROOSTER), dtype="float32")
    sf.write(str(tmp_path / "kitchen.flac"), x, rate)
    (tmp_path / "kitchen.tsv").write_text("onset\toffset\tevent_label\n1.0\t2.0\trooster\n")
    (tmp_path / "hall.tsv").write_text("onset\toffset\tevent_label\n")  # its hall.m4a was never converted
    (tmp_path / "hall.m4a").write_bytes(b"not read by libsndfile")
    got = run_soundwatch("eval-scenes", str(tmp_path), "--backend", "torch", timeout=60)
    assert got.returncode == 2, got.stderr
    assert "hall.tsv" in got.stderr and "without a sound file" in got.stderr and "Traceback" not in got.stderr
    (tmp_path / "hall.m4a").unlink()
    (tmp_path / "hall.tsv").unlink()
    sf.write(str(tmp_path / "kitchen.wav"), x, rate)
    got = run_soundwatch("calibrate", "thresholds", "--scenes", str(tmp_path), "--out", str(tmp_path / "t.json"))
    assert got.returncode == 2, got.stderr
    assert "kitchen.tsv (kitchen.flac, kitchen.wav)" in got.stderr and not (tmp_path / "t.json").exists()


def test_build_scenes_refuses_a_set_whose_digest_is_not_the_recorded_one(tmp_path):
    """scripts/build-scenes.sh checks every set against the digest docs/results.md recorded for it: a set whose
    FLACs differ (here a stand-in file) is reported with exit 1, an unknown set with exit 2; nothing is built."""
    from tests.conftest import REPO

    script = REPO / "scripts" / "build-scenes.sh"
    (tmp_path / "test").mkdir()
    sf.write(tmp_path / "test" / "test-music-000.flac", np.zeros(1600, np.float32), 16000)
    env = {**os.environ, "SCENES": str(tmp_path)}
    got = subprocess.run(["bash", str(script), "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 1, got.stderr
    assert "NOT the recorded 20d0c1c79eeaf666801fe6bdf1011536" in got.stderr
    assert [p.name for p in (tmp_path / "test").iterdir()] == ["test-music-000.flac"]
    got = subprocess.run(["bash", str(script), "tset"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "unknown scene set 'tset'" in got.stderr and not (tmp_path / "tset").exists()
