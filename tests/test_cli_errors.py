"""Bad input to `soundwatch listen`: exit code 2, an actionable message, never a traceback."""

from __future__ import annotations

import zmq

from conftest import ESC50_DIR
from helpers import free_endpoint, run_soundwatch

CLIP = ESC50_DIR / "audio" / "1-100032-A-0.flac"


def _listen(*args: str):
    """``listen`` on a free endpoint: it binds before it opens the input or loads the model, so a check made
    after the bind would otherwise meet the default port held by a daemon of another test worker."""
    return run_soundwatch("listen", *args, "--endpoint", free_endpoint())


def _refused(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_unknown_device_lists_inputs(tiny_checkpoint):
    r = _listen(
        "--device",
        "no-such-microphone",
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--no-dashboard",
    )
    _refused(r, "no input device matches 'no-such-microphone'", "Input devices:")


def test_unknown_device_index(tiny_checkpoint):
    r = _listen("--device", "97", "--model", str(tiny_checkpoint), "--backend", "torch")
    _refused(r, "no input device with index 97", "Input devices:")


def test_missing_and_corrupt_files(tiny_checkpoint, tmp_path):
    missing = tmp_path / "nothing.wav"
    _refused(
        _listen("--file", str(missing), "--model", str(tiny_checkpoint), "--backend", "torch"),
        str(missing),
        "no such file",
    )
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    _refused(
        _listen("--file", str(corrupt), "--model", str(tiny_checkpoint), "--backend", "torch"),
        str(corrupt),
        "cannot decode",
    )


def test_endpoint_in_use(tiny_checkpoint):
    endpoint = free_endpoint()
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    holder.bind(endpoint)
    try:
        r = run_soundwatch(
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
    finally:
        holder.close(linger=0)
        ctx.term()
    _refused(r, f"endpoint {endpoint} is already in use")


def test_invalid_config(tiny_checkpoint, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[listen]\nhop_s = 0.5\nwindow_s = 'long'\n")
    r = _listen("--file", str(CLIP), "--config", str(config), "--model", str(tiny_checkpoint))
    _refused(r, f"{config}:3: listen.window_s: expected float")


def test_flag_out_of_range_names_the_flag(tiny_checkpoint):
    r = _listen("--file", str(CLIP), "--hop", "-1", "--model", str(tiny_checkpoint))
    _refused(r, "--hop-s (listen.hop_s): must be > 0")


def test_model_file_that_is_not_a_checkpoint(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("not a model")
    r = _listen("--file", str(CLIP), "--model", str(fake), "--backend", "torch")
    _refused(r, str(fake), "not a safetensors checkpoint")


def test_model_with_another_window_is_refused(tmp_path):
    import torch

    from soundwatch.models.checkpoint import ModelCard, build_model, save_checkpoint

    from conftest import esc50_classes

    card = ModelCard(arch="tiny", classes=esc50_classes(), sample_rate=16000, window_s=4.0)
    path = save_checkpoint(tmp_path / "w4.safetensors", build_model(card), card, torch.float32)
    r = run_soundwatch(
        "listen", "--file", str(CLIP), "--model", str(path), "--backend", "torch", "--no-dashboard",
        "--endpoint", free_endpoint(),  # the check comes after the bind: never the default port another test holds
    )  # fmt: skip
    _refused(r, "the model takes 64000")


def test_wait_for_subscriber_needs_seconds_not_negative(tiny_checkpoint):
    for bad in ("-1", "nan"):
        r = _listen("--file", str(CLIP), "--model", str(tiny_checkpoint), "--wait-for-subscriber", bad)
        _refused(r, "--wait-for-subscriber: a number of seconds >= 0", bad)


def test_version_is_the_installed_package_s():
    """`soundwatch --version` prints the installed version, exit 0; the package's __version__ agrees with
    it (pyproject.toml holds the number, so the two cannot drift apart unnoticed)."""
    from importlib.metadata import version

    import soundwatch

    r = run_soundwatch("--version")
    assert r.returncode == 0 and r.stdout == f"soundwatch {version('soundwatch')}\n", (r.stdout, r.stderr)
    assert soundwatch.__version__ == version("soundwatch")
