"""Nonsense settings, in the config file or on the command line: exit 2 naming the key, never a traceback.

Every case runs the real CLI (``python -m soundwatch listen``) on a real file; the settings are
refused before any model loads.
"""

from __future__ import annotations

import pytest

from helpers import free_endpoint, run_soundwatch
from test_cli_errors import CLIP, _refused


def _listen(*args: str):
    return run_soundwatch("listen", "--file", str(CLIP), "--backend", "torch", "--no-dashboard", *args)


def test_config_that_is_not_utf8(tmp_path):
    config = tmp_path / "config.toml"
    config.write_bytes(b"[listen]\n# caf\xe9 in Latin-1\nhop_s = 1.0\n")
    _refused(_listen("--config", str(config)), str(config), "not UTF-8")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[listen]\nhop_s = nan\n", ":2: listen.hop_s: must be a finite number, got nan"),
        ("[listen]\nwindow_s = inf\n", ":2: listen.window_s: must be a finite number, got inf"),
        ("[listen]\nhop_s = -inf\n", ":2: listen.hop_s: must be a finite number"),
        ("[audio]\nring_s = 2.0\n", ":2: audio.ring_s: ring_s (2.0) is shorter than a window"),
        ("[audio]\nring_s = 1e12\n", ":2: audio.ring_s: must be <= 3600"),
        ("[publish]\nmetrics_port = 70000\n", ":2: publish.metrics_port: must be <= 65535"),
        ("[publish]\nmetrics_port = -1\n", ":2: publish.metrics_port: must be >= 0"),
        ("[audio]\nchannels = -2\n", ":2: audio.channels: must be >= 0"),
        ("[audio]\nsample_rate = -16000\n", ":2: audio.sample_rate: must be >= 0"),
        ("[listen]\nthreads = -1\n", ":2: listen.threads: must be >= 0"),
        ("[events]\npre_roll_s = -1.0\n", ":2: events.pre_roll_s: must be >= 0"),
        ("[events]\npost_roll_s = -0.5\n", ":2: events.post_roll_s: must be >= 0"),
        ("[events]\nlog_backups = -3\n", ":2: events.log_backups: must be >= 0"),
        ("[detect]\nmin_duration_s = -1.0\n", ":2: detect.min_duration_s: must be >= 0"),
        ("[detect]\nmin_level_dbfs = nan\n", ":2: detect.min_level_dbfs: must be a finite number"),
        ("[detect]\nthreshold = nan\n", ":2: detect.threshold: must be a finite number"),
        ("[publish]\nstatus_interval_s = inf\n", ":2: publish.status_interval_s: must be a finite number"),
        ("[publish]\nsndhwm = 9999999999999\n", ":2: publish.sndhwm: 9999999999999 is too large"),
        ("[train]\nval_fraction = 1.5\n", ":2: train.val_fraction: a share in [0, 1)"),
        ("[train]\nalpha = -0.1\n", ":2: train.alpha: must be in [0, 1]"),
        ('[train]\nschedule = "linear"\n', ":2: train.schedule: 'linear' is not one of exp, cosine"),
        ("[train]\nema = 1.0\n", ":2: train.ema: a decay in [0, 1)"),
        ("[train]\nmixup = -0.2\n", ":2: train.mixup: must be >= 0"),
        ('[train]\nval_split = "folds"\n', ":2: train.val_split: 'folds' is not one of source, random"),
        ("[mqtt]\nqos = 3\n", ":2: mqtt.qos: must be <= 2"),
        ("[mqtt]\nkeepalive_s = 0\n", ":2: mqtt.keepalive_s: must be > 0"),
        ('[mqtt]\ntopic_prefix = "home/#"\n', ":2: mqtt.topic_prefix: an MQTT topic without wildcards"),
        ('[mqtt]\nlabels = "dog"\n', ":2: mqtt.labels: expected a list of strings"),
        ('[webhook]\nevents = ["middle"]\n', ':2: webhook.events: a list of "start" and/or "end"'),
        ('[webhook]\nurls = ["ftp://u:pw@host/x"]\n', ":2: webhook.urls: 'ftp://u:***@host/x' is not an http"),
        ("[webhook]\ntimeout_s = 0\n", ":2: webhook.timeout_s: must be > 0"),
        ('[[sources]]\nkind = "mic"\n', ": [[sources]] #1: kind 'mic' is not one of device, file, stream"),
        ('[[sources]]\nname = "front door"\n', ": [[sources]] #1: name 'front door': letters, digits, _ and -"),
        ('[[sources]]\nkind = "stream"\nurl = "cam1"\n', ': [[sources]] #1: kind = "stream" needs url'),
        ('[[sources]]\nkind = "file"\n', ': [[sources]] #1: kind = "file" needs path'),
        ("[[sources]]\nport = 3\n", ": [[sources]] #1: unknown key 'port'"),
        ("[[sources]]\ngain_db = 90.0\n", ": [[sources]] #1: gain_db must be in -60..60 dB"),
        ("[detect]\nview_s = -1\n", ':2: detect.view_s: must be "auto" or a number of seconds >= 0'),
        ('[detect]\nview_s = "short"\n', ':2: detect.view_s: expected "auto" or a number of seconds'),
        ("[detect]\nview_s = 6.0\n", ":2: detect.view_s: 6 s is longer than the window (listen.window_s 5)"),
        ("[[sources]]\n[sources.detect]\nthreshold = 2.0\n", ": [[sources]] #1: detect.threshold: must be in (0, 1]"),
        (
            "[[sources]]\n[sources.detect]\nloudness = 2.0\n",
            ": [[sources]] #1: detect.loudness: not a [detect] setting",
        ),
        ('[[sources]]\nname = "a"\n[[sources]]\nname = "a"\n', ": two [[sources]] have the same name: ['a']"),
    ],
)
def test_nonsense_in_the_config_file(tmp_path, text, needle):
    config = tmp_path / "config.toml"
    config.write_text(text)
    _refused(_listen("--config", str(config)), f"{config}{needle}")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--hop-s", "nan"), "--hop-s (listen.hop_s): must be a finite number, got nan"),
        (("--hop-s", "inf"), "--hop-s (listen.hop_s): must be a finite number, got inf"),
        (("--hop-s", "1e-9"), "--hop-s (listen.hop_s): must be >= 0.001 s"),
        (("--threads", "-4"), "--threads (listen.threads): must be >= 0"),
        (("--metrics-port", "65536"), "--metrics-port (publish.metrics_port): must be <= 65535"),
        (("--sample-rate", "-1"), "--sample-rate (audio.sample_rate): must be >= 0"),
        (("--duration", "nan"), "--duration: a number of seconds > 0"),
        (("--duration", "-1"), "--duration: a number of seconds > 0"),
        # a flag whose name is not its key's: the error names the flag that was typed
        (("--webhook", "notaurl"), "--webhook (webhook.urls): 'notaurl' is not an http"),
    ],
)
def test_nonsense_on_the_command_line(flags, needle):
    _refused(_listen(*flags), needle)


def test_metrics_port_zero_stays_off():
    from soundwatch.config import Settings, override

    assert override(Settings(), "publish", metrics_port=0).publish.metrics_port == 0


def test_a_retired_setting_loads_with_a_warning(tmp_path):
    """train.workers was never read; a config that still sets it is not refused."""
    import logging

    from soundwatch.config import load_settings

    config = tmp_path / "config.toml"
    config.write_text("[train]\nworkers = 4\nseed = 3\n")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("soundwatch.config").addHandler(handler)
    try:
        settings = load_settings(config)
    finally:
        logging.getLogger("soundwatch.config").removeHandler(handler)
    assert settings.train.seed == 3 and not hasattr(settings.train, "workers")
    assert any("train.workers" in r.getMessage() and "retired" in r.getMessage() for r in records)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[detect]\nlabels = ["dgo"]\n', "detect.labels: labels the model does not know: dgo (did you mean dog?)"),
        ('[detect]\nlabels = ["background"]\n', "detect.labels: 'background' never starts an event"),
        (
            '[[sources]]\nname = "porch"\nkind = "file"\npath = "CLIP"\n[sources.detect]\nlabels = ["rooster", "dgo"]\n',
            "[[sources]] #1 (porch), with its [sources.detect]: detect.labels: labels the model does not know: dgo",
        ),
    ],
)
def test_a_watch_list_naming_a_label_the_model_lacks(tmp_path, text, needle):
    """Labels are checked against the model once it is known (the shipped one here): exit 2 naming the
    label, the one likely meant, and the source whose own [sources.detect] holds it."""
    config = tmp_path / "config.toml"
    config.write_text(text.replace("CLIP", str(CLIP)))
    args = ("listen", "--backend", "onnx", "--no-dashboard", "--config", str(config), "--endpoint", free_endpoint())
    got = run_soundwatch(*args) if "[[sources]]" in text else run_soundwatch(*args, "--file", str(CLIP))
    assert got.returncode == 2 and needle in got.stderr, got.stderr
    assert "Traceback" not in got.stderr
