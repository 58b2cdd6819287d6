"""The trainer on a tiny synthetic ESC-50-layout dataset: losses, augmentations, learning, resume, eval, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from soundwatch.data.datasets import load_dataset
from soundwatch.dsp.augment import augment_wave, mask_spec
from soundwatch.errors import UserError
from soundwatch.train.loop import (
    RunOptions,
    background_mixer,
    ema_update,
    epoch_batches,
    lr_at,
    mix_backgrounds,
    train_fold,
)
from soundwatch.train.losses import supcon_loss, training_loss
from soundwatch.train.synthetic import make_esc, standin_background_manifest
from tests.conftest import ESC50_DIR

torch.set_num_threads(1)

TINY = dict(arch="tiny", pretrained=False, lr=1e-3, warmup_epochs=1, batch_size=16, linear_epochs=1, seed=0)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return make_esc(tmp_path_factory.mktemp("syn") / "esc", n_classes=4, per_fold=3, sample_rate=8000, seconds=2.0)


@pytest.fixture(scope="module")
def clips(syn_root, tmp_path_factory):
    return load_dataset("esc50", syn_root, 8000, cache_dir=tmp_path_factory.mktemp("cache"))


def _hand_supcon(z: np.ndarray, y: np.ndarray, t: float) -> float:
    losses = []
    for i in range(len(y)):
        denom = sum(math.exp(z[i] @ z[a] / t) for a in range(len(y)) if a != i)
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if pos:
            losses.append(-sum(math.log(math.exp(z[i] @ z[p] / t) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_and_hybrid_match_hand_computation():
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, 0])  # class 2 has no positive: left out of the mean
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64)
    expected_sc = _hand_supcon(z.numpy(), y.numpy(), 0.05)
    assert supcon_loss(z, y, 0.05).item() == pytest.approx(expected_sc, rel=1e-9)
    p = logits.softmax(1).numpy()
    expected_ce = -np.mean([math.log(p[i, y[i]]) for i in range(6)])
    total, parts = training_loss("hybrid", logits, z, y, alpha=0.5, temperature=0.05)
    assert total.item() == pytest.approx(0.5 * expected_sc + 0.5 * expected_ce, rel=1e-9)
    assert parts["ce"] == pytest.approx(expected_ce) and parts["supcon"] == pytest.approx(expected_sc)
    assert training_loss("ce", logits, z, y, 0.5, 0.05)[0].item() == pytest.approx(expected_ce, rel=1e-9)


def test_augmentations_keep_shapes_and_repeat_with_the_seed():
    waves = torch.randn(4, 8000, generator=torch.Generator().manual_seed(0))
    spec = torch.rand(4, 128, 63) * -80

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        return augment_wave(waves, g), mask_spec(spec, g)

    (w1, s1), (w2, s2), (w3, _) = run(5), run(5), run(6)
    assert w1.shape == waves.shape and s1.shape == spec.shape
    assert torch.equal(w1, w2) and torch.equal(s1, s2) and not torch.equal(w1, w3)
    gain = w1.abs().max(1).values / waves.abs().max(1).values
    assert (gain <= 1.25 + 1e-5).all()  # a shift can only lose the peak, the gain is at most 1.25
    masked = s1 == spec.mean(dim=(1, 2), keepdim=True)
    assert masked.any() and masked.float().mean() < 0.9


def test_balanced_batches_cover_every_clip_once():
    labels = np.repeat(np.arange(5), 8)
    batches = epoch_batches(labels, 8, 4, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(40))
    assert all((np.bincount(labels[b]) % 4 == 0).all() for b in batches)  # whole groups of 4 per class


def test_training_a_few_epochs_beats_chance(clips, tmp_path):
    result = train_fold(clips, 1, RunOptions(**TINY, epochs=8, loss="hybrid"), tmp_path / "run")
    assert result.test_acc > 0.5  # 4 classes: chance is 0.25
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    assert card["classes"] == clips.classes and card["arch"] == "tiny" and card["sample_rate"] == 8000
    assert "non-commercial" in card["license"] and card["folds"]["test"] == 1
    assert card["metrics"]["chosen_by"].startswith("validation split")
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(8)) and all("val_acc" in r for r in lines)


def _strip_times(path: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "data_wait_share"} for r in rows]


def test_resume_repeats_the_uninterrupted_run(clips, tmp_path):
    opts = RunOptions(**TINY, epochs=3, loss="hybrid")
    train_fold(clips, 2, opts, tmp_path / "straight")
    train_fold(clips, 2, RunOptions(**TINY, epochs=2, loss="hybrid"), tmp_path / "cut")
    train_fold(clips, 2, opts, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert _strip_times(tmp_path / "straight" / "metrics.jsonl") == _strip_times(tmp_path / "cut" / "metrics.jsonl")
    # stopping early: --resume with fewer epochs than done trains nothing and reports the chosen checkpoint
    early = train_fold(clips, 2, RunOptions(**TINY, epochs=1, loss="hybrid"), tmp_path / "cut", resume=True)
    assert early.best_epoch == b["best"]["epoch"] and len(early.predictions) == 12
    assert b["commit"] and json.loads((tmp_path / "cut" / "best.json").read_text())["training"]["commit"] == b["commit"]


class _Killed(Exception):
    pass


def test_resume_with_ema_mixup_cosine_and_no_validation_repeats_the_run(clips, tmp_path):
    opts = RunOptions(**TINY, epochs=3, loss="hybrid", schedule="cosine", ema=0.9, mixup=0.4, val_fraction=0.0)
    straight = train_fold(clips, 2, opts, tmp_path / "straight")

    def kill_after_epoch_0(record: dict) -> None:  # the state of epoch 0 is on disk: an interruption
        raise _Killed

    with pytest.raises(_Killed):
        train_fold(clips, 2, opts, tmp_path / "cut", on_epoch=kill_after_epoch_0)
    train_fold(clips, 2, opts, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)
    for part in ("model", "average"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert any(not torch.equal(a["model"][k], a["average"][k]) for k in a["model"])  # the average is its own
    assert _strip_times(tmp_path / "straight" / "metrics.jsonl") == _strip_times(tmp_path / "cut" / "metrics.jsonl")
    card = json.loads((tmp_path / "straight" / "best.json").read_text())
    assert straight.best_epoch == 2 and card["folds"]["val_clips"] == 0
    assert card["metrics"]["chosen_by"].startswith("the final epoch")
    assert card["training"]["ema"] == 0.9 and card["training"]["schedule"] == "cosine"
    from soundwatch.train.report import fold_table

    row = {
        "fold": 2,
        "best_epoch": straight.best_epoch,
        "val_acc": None,
        "test_acc": straight.test_acc,
        "epochs_done": 3,
        "wall_s": straight.wall_s,
    }
    assert "final epoch, fixed before training" in fold_table([row], "cv", opts.val_fraction)
    from soundwatch.models.checkpoint import load_checkpoint

    saved, _ = load_checkpoint(tmp_path / "straight" / "best.safetensors")  # the average is what ships
    for key, value in saved.state_dict().items():
        assert torch.allclose(value.float(), a["average"][key].float()), key


def test_cosine_schedule_warms_up_then_falls_to_zero():
    opts = RunOptions(lr=1e-3, warmup_epochs=2, epochs=10, schedule="cosine")
    lrs = [lr_at(opts, e, s, 5) for e in range(10) for s in range(5)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    after = lrs[10:]
    assert all(a > b for a, b in zip(after, after[1:])) and after[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_at(opts, 6, 0, 5) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 21 / 40)))


def test_ema_update_averages_weights_and_float_buffers():
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        b.weight.fill_(3.0)
        b.running_mean.fill_(2.0)
        b.num_batches_tracked.fill_(7)
    ema_update(a, b, decay=0.5, steps_done=1000)
    assert torch.allclose(a.weight, torch.full((3,), 2.0)) and torch.allclose(a.running_mean, torch.full((3,), 1.0))
    assert int(a.num_batches_tracked) == 7
    ema_update(a, b, decay=0.99, steps_done=0)  # early steps: d = 1/10, the average follows the model
    assert torch.allclose(a.weight, torch.full((3,), 0.1 * 2.0 + 0.9 * 3.0))


def test_mixup_cross_entropy_weighs_both_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    z = torch.nn.functional.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    y, other = torch.tensor([0, 1]), torch.tensor([2, 0])
    logp = torch.log_softmax(logits, 1)
    expected = -(0.7 * logp[[0, 1], y] + 0.3 * logp[[0, 1], other]).mean()
    total, parts = training_loss("ce", logits, z, y, 0.5, 0.05, (other, 0.7))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = training_loss("hybrid", logits, z, y, 0.5, 0.05)[1]["supcon"]
    assert training_loss("hybrid", logits, z, y, 0.5, 0.05, (other, 0.7))[1]["supcon"] == pytest.approx(plain)


def test_supcon_is_two_stage(clips, tmp_path):
    result = train_fold(clips, 1, RunOptions(**TINY, epochs=2, loss="supcon"), tmp_path / "sc")
    stages = [json.loads(ln)["stage"] for ln in (tmp_path / "sc" / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["supcon", "supcon", "linear"]
    assert result.best_epoch == 2  # chosen only among the linear-stage epochs


def test_cli_train_then_eval(syn_root, tmp_path, monkeypatch):
    from soundwatch.cli import _register_commands, app

    monkeypatch.setenv("SOUNDWATCH_CACHE", str(tmp_path / "cache"))
    _register_commands()
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "esc50",
            "--data-dir",
            str(syn_root),
            "--folds",
            "1,2",
            "--arch",
            "tiny",
            "--no-pretrained",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--warmup-epochs",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert {"config.json", "report.md", "fold1", "fold2"} <= {p.name for p in out.iterdir()}
    assert "+-" in (out / "report.md").read_text()
    assert (out / "fold1" / "confusion.png").stat().st_size > 1000
    run_commit = json.loads((out / "config.json").read_text())["commit"]
    assert run_commit and all(
        json.loads((out / f"fold{k}" / "best.json").read_text())["training"]["commit"] == run_commit for k in (1, 2)
    )  # one commit for the run, not HEAD at each fold
    ckpt = out / "fold1" / "best.safetensors"
    args = ["eval", str(ckpt), "--dataset", "esc50", "--data-dir", str(syn_root), "--fold", "1"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a == b and a["n_clips"] == 12 and set(a["per_class_accuracy"]) == {f"class{i}" for i in range(4)}
    result = json.loads((out / "fold1" / "result.json").read_text())
    assert a["accuracy"] == pytest.approx(result["test_acc"])  # eval's centre crop == the trainer's test pass
    assert len(a["predictions"]) == 12 and sum(map(sum, a["confusion"])) == 12
    both = runner.invoke(app, [*args, "--backend", "torch,onnx"])
    assert both.exit_code == 0, both.output
    both = json.loads(both.stdout)
    assert [r["backend"] for r in both["results"]] == ["torch", "onnx"]
    assert both["results"][0]["predictions"] == a["predictions"]
    same = sum(both["results"][1]["predictions"][k] == v for k, v in a["predictions"].items()) / 12
    assert both["agreement_with_torch"]["onnx"] == pytest.approx(same) and same >= 11 / 12
    # --resume refuses settings that differ from the run's, options added since included (their default)
    config = json.loads((out / "config.json").read_text())
    del config["options"]["ema"]  # as written before --ema existed
    (out / "config.json").write_text(json.dumps(config))
    again = runner.invoke(
        app,
        [
            "train",
            "esc50",
            "--data-dir",
            str(syn_root),
            "--folds",
            "1,2",
            "--arch",
            "tiny",
            "--no-pretrained",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--warmup-epochs",
            "1",
            "--out",
            str(out),
            "--resume",
            "--ema",
            "0.99",
        ],
    )
    assert isinstance(again.exception, UserError) and "ema was 0.0, now 0.99" in str(again.exception)
    # the same command without --resume would have wiped the finished run: refused, the run intact
    weights = ckpt.read_bytes()
    fresh = runner.invoke(app, ["train", "esc50", "--data-dir", str(syn_root), "--arch", "tiny", "--out", str(out)])
    assert isinstance(fresh.exception, UserError), fresh.output
    assert "holds a run already (config.json" in str(fresh.exception) and "add --resume" in str(fresh.exception)
    assert ckpt.read_bytes() == weights and (out / "fold1" / "metrics.jsonl").is_file()
    bad = runner.invoke(app, ["train", "esc50", "--data-dir", str(syn_root), "--folds", "9", "--arch", "tiny"])
    assert isinstance(bad.exception, UserError) and "fold 9 does not exist" in str(bad.exception)
    missing = runner.invoke(app, ["train", "esc50", "--data-dir", str(tmp_path / "nowhere"), "--arch", "tiny"])
    assert isinstance(missing.exception, UserError) and "nowhere: no such directory" in str(missing.exception)
    (tmp_path / "bare").mkdir()  # a folder, but not a dataset's root: said so, not "no readable audio"
    bare = runner.invoke(app, ["train", "esc50", "--data-dir", str(tmp_path / "bare"), "--arch", "tiny"])
    assert isinstance(bare.exception, UserError) and "bare: no audio/ folder in it" in str(bare.exception)


@pytest.fixture(scope="module")
def syn16(tmp_path_factory):
    """16 kHz synthetic clips (the background corpus's rate) and a stand-in corpus of real ESC-50 clips."""
    root = make_esc(tmp_path_factory.mktemp("syn16") / "esc", n_classes=4, per_fold=3, sample_rate=16000, seconds=2.0)
    clips = load_dataset("esc50", root, 16000, cache_dir=tmp_path_factory.mktemp("cache16"))
    manifest = standin_background_manifest(ESC50_DIR, tmp_path_factory.mktemp("corpus") / "m.csv", per_type=4)
    return root, clips, ESC50_DIR / "audio", manifest


def _mixing(syn16, **kw) -> RunOptions:
    _, _, corpus, manifest = syn16
    return RunOptions(**TINY, backgrounds=str(corpus), background_manifest=str(manifest), mix_streams=1, **kw)


def test_background_mixing_replaces_the_asked_share_of_clips_repeatably(syn16):
    waves = np.tile(np.asarray(syn16[1].waves), (4, 1))[:200]
    mixer = background_mixer(_mixing(syn16), waves.shape[1])
    runs = []
    for seed in (5, 5, 6):
        mixer.rng = np.random.default_rng(seed)
        runs.append(mix_backgrounds(waves, mixer, 0.5))
    (a, n), (b, m), (c, _) = runs
    assert np.array_equal(a, b) and n == m and not np.array_equal(a, c)
    changed = np.array([not np.array_equal(a[i], waves[i]) for i in range(len(waves))])
    assert changed.sum() == n and 70 <= n <= 130  # Binomial(200, 0.5): within 4 standard deviations
    # a mixture is the clip's sound over a background, not the clip rescaled: it no longer lines up with it
    for i in np.flatnonzero(changed)[:20]:
        corr = np.corrcoef(a[i], waves[i])[0, 1]
        assert not corr > 0.999, (i, corr)
    mixer.rng = np.random.default_rng(5)
    assert mix_backgrounds(waves, mixer, 0.0)[1] == 0 and mix_backgrounds(waves, mixer, 1.0)[1] == len(waves)


def test_training_over_backgrounds_resumes_exactly_and_records_its_mixing(syn16, tmp_path):
    clips = syn16[1]
    opts = _mixing(syn16, epochs=2, loss="hybrid", val_fraction=0.0)
    train_fold(clips, 2, opts, tmp_path / "straight")

    def kill_after_epoch_0(record: dict) -> None:
        raise _Killed

    with pytest.raises(_Killed):
        train_fold(clips, 2, opts, tmp_path / "cut", on_epoch=kill_after_epoch_0)
    train_fold(clips, 2, opts, tmp_path / "cut", resume=True)
    train_fold(clips, 2, RunOptions(**TINY, epochs=2, loss="hybrid", val_fraction=0.0), tmp_path / "clean")
    a, b, clean = (
        torch.load(tmp_path / d / "state.pt", weights_only=False)["model"] for d in ("straight", "cut", "clean")
    )
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert not all(torch.equal(v, clean[k]) for k, v in a.items())  # the mixtures changed what was learnt
    rows = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    train_clips = 48  # folds 1, 3, 4, 5: 4 classes x 3 clips x 4 folds
    assert all(0.25 * train_clips <= r["train_mixed"] <= 0.75 * train_clips for r in rows)
    assert _strip_times(tmp_path / "straight" / "metrics.jsonl") == _strip_times(tmp_path / "cut" / "metrics.jsonl")
    mixing = json.loads((tmp_path / "straight" / "best.json").read_text())["training"]["backgrounds"]
    assert mixing["split"] == "train" and mixing["mix_share"] == 0.5 and mixing["ebr_db"] == [-9.0, 15.0]
    assert "backgrounds" not in json.loads((tmp_path / "clean" / "best.json").read_text())["training"]


def test_cli_train_refuses_backgrounds_it_cannot_mix_before_training(syn_root, syn16, tmp_path, monkeypatch):
    from soundwatch.cli import _register_commands, app

    monkeypatch.setenv("SOUNDWATCH_CACHE", str(tmp_path / "cache"))
    _register_commands()
    runner = CliRunner()
    root16, _, corpus, manifest = syn16
    base = ["train", "esc50", "--arch", "tiny", "--no-pretrained", "--epochs", "1"]
    bad_manifest = tmp_path / "not-a-manifest.csv"
    bad_manifest.write_text("name,seconds\nrain.wav,3\n")
    cases = {
        "no such directory": ["--data-dir", str(root16), "--backgrounds", str(tmp_path / "nowhere")],
        "no manifest": ["--data-dir", str(root16), "--backgrounds", str(corpus)],
        "not a manifest": [
            "--data-dir",
            str(root16),
            "--backgrounds",
            str(corpus),
            "--background-manifest",
            str(bad_manifest),
        ],
        "the clips at 8000 Hz": [
            "--data-dir",
            str(syn_root),
            "--backgrounds",
            str(corpus),
            "--background-manifest",
            str(manifest),
        ],
        "is above --mix-ebr-max": [
            *("--data-dir", str(root16), "--backgrounds", str(corpus), "--background-manifest", str(manifest)),
            *("--mix-ebr-min", "10", "--mix-ebr-max", "0"),
        ],
    }
    for said, args in cases.items():
        out = tmp_path / said.replace(" ", "-")
        res = runner.invoke(app, [*base, *args, "--out", str(out)])
        assert isinstance(res.exception, UserError) and said in str(res.exception), (said, res.output, res.exception)
        assert not (out / "config.json").exists()  # refused before a run was started


@pytest.mark.slow
def test_ddp_gloo_two_processes(syn_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "SOUNDWATCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "soundwatch",
        "train",
        "esc50",
        "--data-dir",
        str(syn_root),
        "--folds",
        "1",
        "--arch",
        "tiny",
        "--no-pretrained",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--warmup-epochs",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert len((out / "fold1" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "fold1" / "best.safetensors").is_file()


def test_paper_protocol_is_labelled_and_uses_all_training_clips(clips, tmp_path):
    train_fold(clips, 1, RunOptions(**TINY, epochs=1, loss="ce", protocol="paper"), tmp_path / "paper")
    card = json.loads((tmp_path / "paper" / "best.json").read_text())
    assert card["metrics"]["chosen_by"].startswith("test fold (paper protocol")
    assert card["folds"]["val_clips"] == 0 and card["folds"]["train_clips"] == 48


def test_cli_us8k_uses_its_learning_rate_and_native_rate(tmp_path, monkeypatch):
    from soundwatch.cli import _register_commands, app
    from soundwatch.train.synthetic import make_us8k

    monkeypatch.setenv("SOUNDWATCH_CACHE", str(tmp_path / "cache"))
    root = make_us8k(tmp_path / "us8k", n_classes=3, per_fold=1, sample_rate=8000)
    _register_commands()
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "us8k",
            "--data-dir",
            str(root),
            "--folds",
            "10",
            "--arch",
            "tiny",
            "--no-pretrained",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["sample_rate"] == 8000 and config["options"]["lr"] == 1e-4
    assert json.loads((out / "fold10" / "best.json").read_text())["window_s"] == 4.0
