"""Adapting a model to real rooms (soundwatch/train/adapt.py, ``soundwatch adapt``).

- the training mixer: repeatable by seed, the event at the asked ratio (RMS of the event over
  the background under it), at least ``min_visible_s`` of it inside the window;
- the open-set gate (``OpenSet``): its output is a distribution, it lowers the top event score of
  a window far from every prototype and leaves one close to a prototype as it was;
- ``adapt`` end to end on a tiny network and a stand-in corpus of real ESC-50 clips: a model with
  a last ``background`` class and the gate in its card, that loads, exports to ONNX with the gate
  inside (the same output as torch), and whose background class never starts an event;
- ``--keep-classes`` (only the background class is learnt): the model's 50 class scores keep
  their order on every clip;
- a stopped end-to-end run resumed (``resume=True``) ending with the same weights as one that never
  stopped, and refusing other settings or a run that is not there;
- the command refusing a model whose card does not name its training folds, and a device it cannot
  train on (`--device` is cpu or cuda).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from soundwatch.data import scenes
from soundwatch.detect import Detector
from soundwatch.errors import UserError
from soundwatch.labels import BACKGROUND_LABEL
from soundwatch.models.checkpoint import load_checkpoint, read_card
from soundwatch.models.soundclr import OpenSet
from soundwatch.train import adapt as adapt_mod
from soundwatch.train.synthetic import standin_background_manifest
from tests.conftest import ESC50_DIR, REPO
from tests.helpers import run_soundwatch

RATE = 16000
ROOSTER = "1-26806-A-1.flac"  # fold 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest with train and val splits whose "speech" and "music" are real ESC-50 clips of folds 4-5."""
    manifest = tmp_path_factory.mktemp("corpus") / "manifest.csv"
    return ESC50_DIR / "audio", standin_background_manifest(ESC50_DIR, manifest, per_type=4)


def _maker(corpus, seed, **kw):
    opts = adapt_mod.AdaptOptions(streams_per_type=2, stream_s=12.0, **kw)
    return adapt_mod.WindowMaker(corpus[0], corpus[1], "train", 5 * RATE, opts, np.random.default_rng(seed))


def _clip(name):
    return scenes.read_audio(ESC50_DIR / "audio" / name)


def _fold2_clips(n: int):
    """(all ESC-50 clips, the first ``n`` clips of fold 2 as a ClipSet of their own)."""
    import dataclasses

    from soundwatch.data.datasets import load_dataset

    clips = load_dataset("esc50", ESC50_DIR, RATE)
    keep = clips.indices([2])[:n]
    return clips, dataclasses.replace(
        clips,
        waves=np.asarray(clips.waves[keep]),
        labels=clips.labels[keep],
        folds=clips.folds[keep],
        names=[clips.names[i] for i in keep],
        sources=[clips.sources[i] for i in keep],
    )


def test_training_mixer_is_repeatable_and_at_the_asked_ratio(corpus, monkeypatch):
    clip = _clip(ROOSTER)
    a, b = _maker(corpus, 5), _maker(corpus, 5)
    mixes_a = [a.mixed(clip) for _ in range(6)]
    mixes_b = [b.mixed(clip) for _ in range(6)]
    for (x, e), (y, f) in zip(mixes_a, mixes_b):
        assert e == f and np.array_equal(x, y)
    other = _maker(corpus, 6).mixed(clip)[0]
    assert not np.array_equal(other, mixes_a[0][0])

    # the ratio, measured: replay the mixer's draws with a known background and find the event in it
    maker = _maker(corpus, 9, ebr_db=(-6.0, 12.0))
    bg = scenes.room_tone(np.random.default_rng(1), 5 * RATE, -30.0)
    monkeypatch.setattr(maker, "background", lambda kind: bg.copy())
    start, stop = scenes.active_span(clip)
    event = clip[start:stop]
    for _ in range(8):
        out, ebr = maker.mixed(clip)
        added = out - bg
        on = np.flatnonzero(np.abs(added) > 0)
        lo, hi = on[0], on[-1] + 1
        assert -6.0 <= ebr <= 12.0
        assert scenes.db(added[lo:hi]) - scenes.db(bg[lo:hi]) == pytest.approx(ebr, abs=0.05)
        assert hi - lo >= min(len(event), RATE) - 2  # at least 1 s of the event in the window


def test_open_set_gate_is_a_distribution_and_gates_far_windows_only():
    torch.manual_seed(0)
    gate = OpenSet(n_events=3, dim=4, tau=0.8, sharpness=40.0)
    gate.prototypes.copy_(torch.eye(4)[:3])
    logits = torch.tensor([[4.0, 0.0, 0.0, -2.0], [4.0, 0.0, 0.0, -2.0]])
    near = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.0, 0.0]]), dim=1)
    far = torch.tensor([[0.0, 0.0, 0.0, 1.0]])  # orthogonal to every prototype
    out = gate(logits, torch.cat([near, far]))
    p = out.exp()
    assert torch.allclose(p.sum(1), torch.ones(2), atol=1e-6)
    before = torch.softmax(logits, 1)
    assert torch.allclose(p[0], before[0], atol=1e-3)  # close to a prototype: unchanged
    assert p[1, 0] < 0.01 * before[1, 0] and p[1, 3] > 0.99  # far from all: background
    assert p[1, :3].argmax() == before[1, :3].argmax()  # the events keep their order


def test_adapt_end_to_end_on_a_tiny_network(tmp_path, corpus, tiny_checkpoint, monkeypatch):
    from soundwatch.engines import create_engine

    _, sub = _fold2_clips(40)
    opts = adapt_mod.AdaptOptions(
        epochs=2,
        mixed_per_clip=1,
        background_windows=40,
        streams_per_type=2,
        stream_s=12.0,
        val_events=20,
        val_backgrounds=20,
        batch_size=32,
    )
    out = tmp_path / "adapted.safetensors"
    report = adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, opts)
    assert report["windows"] == {"clean": 40, "mixed": 40, "background": 40}
    card = read_card(out)
    assert card.classes[-1] == BACKGROUND_LABEL and card.classes[:-1] == read_card(tiny_checkpoint).classes
    gate = card.extra["open_set"]
    assert math.isfinite(gate["tau"]) and gate["sharpness"] > 0
    assert card.extra["adapted"]["train_folds"] == [2]
    model, _ = load_checkpoint(out)
    present = torch.zeros(50)
    present[np.unique(sub.labels)] = 1.0  # a class without training windows has no prototype
    assert model.open_set is not None and torch.allclose(model.open_set.prototypes.norm(dim=1), present, atol=1e-5)

    waves = np.stack([_clip(ROOSTER), _clip("1-100032-A-0.flac")]).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(waves))[0].numpy()
    assert np.allclose(np.exp(want).sum(1), 1.0, atol=1e-5)
    got = create_engine("onnx", out, engines_dir=tmp_path / "engines").infer(waves)
    assert np.allclose(got, want, atol=1e-3)  # the gate is inside the exported graph

    # the background class is scored but never starts an event
    det = Detector(card.classes, 0.5, smooth_windows=1)
    probs = np.zeros(len(card.classes))
    probs[-1] = 1.0
    assert det.update(probs, -20.0, 1.0) == []
    probs[:] = 0
    probs[1] = 1.0
    assert [e["label"] for e in det.update(probs, -20.0, 2.0)] == [card.classes[1]]


def _end_to_end_options(**kw) -> adapt_mod.AdaptOptions:
    """End-to-end options small enough for a test: one mixture a clip, a stand-in corpus of 12 s streams."""
    base = dict(mixed_per_clip=1, streams_per_type=2, stream_s=12.0, val_events=8, val_backgrounds=8, lr=1e-3)
    return adapt_mod.AdaptOptions(end_to_end=True, **{**base, **kw})


def test_end_to_end_adaptation_trains_every_layer_on_fresh_windows_every_epoch(
    tmp_path, corpus, tiny_checkpoint, monkeypatch
):
    _, sub = _fold2_clips(24)
    draws = []  # the event-to-background ratio of every mixture made, in order
    made = adapt_mod.WindowMaker.mixed

    def mixed(self, clip):
        window, ebr = made(self, clip)
        draws.append(ebr)
        return window, ebr

    monkeypatch.setattr(adapt_mod.WindowMaker, "mixed", mixed)
    opts = _end_to_end_options(epochs=2, background_windows=16, batch_size=16)
    before, _ = load_checkpoint(tiny_checkpoint)
    epochs = []
    out = tmp_path / "adapted.safetensors"
    report = adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, opts, on_epoch=epochs.append)
    assert report["windows"]["made_afresh"] == "every epoch"
    assert [(e["epoch"], e["windows"]) for e in epochs] == [(0, 24 + 24 + 16), (1, 24 + 24 + 16)]
    # training made 24 mixtures an epoch, then 24 more for the prototypes and 8 for the gate: all new draws
    assert len(draws) == 24 * 2 + 24 + 8
    assert draws[:24] != draws[24:48]
    after, card = load_checkpoint(out)
    assert card.classes[-1] == BACKGROUND_LABEL and after.open_set is not None
    first = next(k for k in before.state_dict() if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(before.state_dict()[first], after.state_dict()[first])  # the first layer learnt too
    with pytest.raises(UserError, match="no --bank"):
        adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, opts, bank_file=tmp_path / "b.pt")


def test_prefetched_batches_keep_their_order_raise_the_helpers_error_and_stop_it_when_left():
    """End-to-end adaptation mixes the next batch in a helper thread (``prefetched``) while the network trains."""
    import threading

    assert list(adapt_mod.prefetched(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("mixing failed")

    with pytest.raises(ValueError, match="mixing failed"):
        list(adapt_mod.prefetched(broken()))
    made = []

    def counting():
        for i in range(1000):
            made.append(i)
            yield i

    batches = adapt_mod.prefetched(counting(), depth=2)
    assert next(batches) == 0
    batches.close()  # as a run stopped mid-epoch leaves the loop
    assert len(made) <= 5  # at most depth ahead (+ the one being put and the one checked): not the other 995
    assert not any(t.name == "adapt-windows" for t in threading.enumerate())


def test_a_stopped_end_to_end_run_resumes_to_the_same_weights(tmp_path, corpus, tiny_checkpoint):
    _, sub = _fold2_clips(16)
    opts = _end_to_end_options(
        epochs=3, background_windows=8, batch_size=8, hard_negatives=0.5, hard_pool=2, distill=1.0
    )  # mining and the teacher (the network before adaptation, not the stopped run's) resume too

    def run(out, options=opts, **kw):
        return adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, options, **kw)

    whole = tmp_path / "whole.safetensors"
    run(whole)
    assert not (tmp_path / "whole.safetensors.partial.pt").exists()  # removed once the model is written

    class Stopped(Exception):
        pass

    def stop_after_epoch_1(record):
        if record["epoch"] == 1:
            raise Stopped  # as a killed run would stop, after its second epoch was saved

    out = tmp_path / "stopped.safetensors"
    with pytest.raises(Stopped):
        run(out, on_epoch=stop_after_epoch_1)
    partial = tmp_path / "stopped.safetensors.partial.pt"
    assert partial.is_file() and not out.exists()
    with pytest.raises(UserError, match=r"other settings \(epochs\)"):
        run(out, dataclasses.replace(opts, epochs=4), resume=True)
    epochs = []
    report = run(out, on_epoch=epochs.append, resume=True)
    assert [e["epoch"] for e in epochs] == [2]  # only the epoch that was left
    assert epochs[0]["hard_windows"] == 4  # mined again from where the stopped run's random state was
    assert report["history_last"][-1]["epoch"] == 2
    want, got = load_checkpoint(whole)[0].state_dict(), load_checkpoint(out)[0].state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not partial.exists()
    with pytest.raises(UserError, match="no stopped run"):
        run(tmp_path / "never.safetensors", resume=True)


def test_adapt_refuses_a_model_that_has_no_training_folds(tmp_path, tiny_checkpoint):
    got = run_soundwatch(
        "adapt", str(tiny_checkpoint), "--out", str(tmp_path / "x.safetensors"), "--data-dir", str(ESC50_DIR)
    )
    assert got.returncode == 2 and "folds" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.parametrize("onto", ["the-input", "another-model", "the-shipped-model"])
def test_adapt_never_replaces_a_model(tmp_path, tiny_checkpoint, onto):
    """--out onto the model being adapted, another model, or the shipped one: refused before any work
    (an hour later the adapted weights would have replaced hours of training), the file intact."""
    import shutil

    from soundwatch.models.card import DEFAULT_MODEL

    source = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint, source)
    target = {"the-input": source, "another-model": tmp_path / "other.safetensors", "the-shipped-model": DEFAULT_MODEL}[
        onto
    ]
    if onto == "another-model":
        shutil.copy(tiny_checkpoint, target)
    before = target.read_bytes()
    got = run_soundwatch(
        "adapt", str(source), "--out", str(target), "--data-dir", str(ESC50_DIR), "--corpus", str(tmp_path)
    )
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
    needle = {
        "the-input": "already exists; it is the model being adapted, and adapt never replaces a model",
        "another-model": "already exists; adapt never replaces a model",
        "the-shipped-model": "is a file shipped with soundwatch beside its model",
    }[onto]
    assert needle in got.stderr and target.read_bytes() == before


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_adapt_refuses_a_device_it_cannot_train_on_before_any_work(tmp_path, device):
    """--device is cpu or cuda; cuda on a machine whose torch sees no GPU is refused before the clips are
    read, with exit code 2 and nothing written (on a machine with a GPU the cuda case does not apply)."""
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("torch sees a CUDA GPU here: --device cuda is not refused")
    out = tmp_path / "adapted.safetensors"
    got = run_soundwatch(
        "adapt", "--out", str(out), "--data-dir", str(ESC50_DIR), "--corpus", str(tmp_path), "--device", device
    )
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
    want = {"tpu": "--device tpu: give cpu or cuda", "cuda": "--device cuda: torch sees no CUDA GPU"}[device]
    assert want in got.stderr and not out.exists()


def test_adapt_refuses_a_report_redirected_onto_its_own_model_card(tmp_path):
    """`adapt ... > adapted.json` with --out adapted.safetensors: the card written beside the model and the
    report on stdout would garble each other after an hour of training; refused at once, nothing written."""
    card = tmp_path / "adapted.json"
    card.write_text("kept\n")
    with card.open("a") as stdout:  # what the shell's `>>` hands the process (`>` would empty it first)
        got = subprocess.run(
            [sys.executable, "-m", "soundwatch", "adapt", "--out", str(tmp_path / "adapted.safetensors")]
            + ["--data-dir", str(ESC50_DIR), "--corpus", str(tmp_path)],
            cwd=REPO,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
    assert f"standard output goes into {card}" in got.stderr
    assert card.read_text() == "kept\n" and not (tmp_path / "adapted.safetensors").exists()


def test_keep_classes_learns_only_the_background(tmp_path, corpus, tiny_checkpoint):
    clips, sub = _fold2_clips(30)
    opts = adapt_mod.AdaptOptions(
        epochs=2,
        mixed_per_clip=1,
        background_windows=30,
        streams_per_type=2,
        stream_s=12.0,
        val_events=10,
        val_backgrounds=10,
        batch_size=16,
        lr=0.0,
        keep_classes=True,
    )
    out = tmp_path / "kept.safetensors"
    adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, opts)
    before, _ = load_checkpoint(tiny_checkpoint)
    after, _ = load_checkpoint(out)
    assert not torch.equal(after.classifier.weight[-1], torch.zeros_like(after.classifier.weight[-1]))
    waves = torch.from_numpy(np.asarray(clips.waves[clips.indices([1])[:12]], np.float32))
    with torch.no_grad():
        old, new = before(waves)[0].numpy(), after(waves)[0].numpy()
    assert np.array_equal(np.argsort(old, axis=1), np.argsort(new[:, :-1], axis=1))


def _ensembles(tmp_path, members=2):
    """A clean two-network EfficientNet-Lite0 ensemble over 3 classes and an "adapted" one made from it
    (new last stage, classifier with background, open-set gate), both saved as checkpoints. With
    ``members=1``: one network (a SoundCLR, as the trainer writes it, projection head included) and
    its adapted copy."""
    from soundwatch.dsp.frontend import FrontendConfig
    from soundwatch.models.checkpoint import ModelCard, save_checkpoint
    from soundwatch.models.soundclr import SoundCLR, SoundCLREnsemble

    torch.manual_seed(0)
    frontend = FrontendConfig(sample_rate=RATE)
    classes = ["dog", "rooster", "pig"]
    if members == 1:
        clean = SoundCLR("efficientnet_lite0", 3, frontend).eval()
        adapted = SoundCLR("efficientnet_lite0", 4, frontend, projector=False).eval()
    else:
        clean = SoundCLREnsemble("efficientnet_lite0", 3, frontend, members=members).eval()
        adapted = SoundCLREnsemble("efficientnet_lite0", 4, frontend, members=members).eval()
    for c, a in zip(adapt_mod._members(clean), adapt_mod._members(adapted)):
        a.backbone.load_state_dict(c.backbone.state_dict())
        net = a.backbone.net
        with torch.no_grad():  # the last stage is what adapt trains
            for p in [*net._blocks[-1].parameters(), *net._conv_head.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
    adapted.open_set = OpenSet(3, adapted.embed_dim, tau=0.2, sharpness=6.0)
    adapted.open_set.prototypes.copy_(torch.nn.functional.normalize(torch.randn(3, adapted.embed_dim), dim=1))

    def card(names, extra, projector=False):
        return ModelCard(
            arch="efficientnet_lite0",
            classes=names,
            sample_rate=RATE,
            window_s=5.0,
            frontend=frontend.to_dict(),
            members=members,
            projector=projector,
            extra=extra,
        )

    clean_path = save_checkpoint(tmp_path / "clean.safetensors", clean, card(classes, {}, projector=members == 1))
    gate = {"open_set": {"tau": 0.2, "sharpness": 6.0}}
    adapted_path = save_checkpoint(tmp_path / "adapted.safetensors", adapted, card([*classes, BACKGROUND_LABEL], gate))
    return clean_path, adapted_path


@pytest.mark.parametrize("members", [2, 1])
def test_two_tops_keep_the_clean_names_and_take_background_from_the_room_tops(tmp_path, members):
    from soundwatch.errors import CheckpointError
    from soundwatch.models.checkpoint import save_checkpoint

    clean_path, adapted_path = _ensembles(tmp_path, members)
    clean, clean_card = load_checkpoint(clean_path)
    adapted, adapted_card = load_checkpoint(adapted_path)
    waves = torch.from_numpy(
        np.stack([_clip(ROOSTER), _clip("1-100032-A-0.flac"), np.zeros(5 * RATE)]).astype(np.float32)
    )
    with torch.no_grad():
        # log p: a network gives logits, an ensemble (or the open-set gate) log-probabilities already
        want_clean, want_room = torch.log_softmax(clean(waves)[0], 1), adapted(waves)[0]
        # class_weight 0: exactly the adapted model; 1: the clean ensemble names the sound
        room_only, _ = adapt_mod.combine_tops(clean, clean_card, adapted, adapted_card, 0.0)
        assert torch.allclose(room_only(waves)[0], want_room, atol=1e-5)
        model, card = adapt_mod.combine_tops(clean, clean_card, adapted, adapted_card, 1.0)
        got = model(waves)[0]
    p = got.exp()
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(p[:, -1], want_room.exp()[:, -1], atol=1e-5)  # p(background): the room tops'
    assert torch.allclose(p[:, :-1] / p[:, :-1].sum(1, keepdim=True), want_clean.exp(), atol=1e-5)
    assert card.classes == adapted_card.classes and card.extra["two_tops"]["class_weight"] == 1.0
    assert card.members == members and len(model.rooms) == members

    # a saved two-top checkpoint loads as one (its ONNX graph, both tops and the gates in it, is checked
    # against torch by the class-gate test below: one export of a two-network graph is half a minute here)
    path = save_checkpoint(tmp_path / "two.safetensors", model, card)
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.allclose(loaded(waves)[0], got, atol=1e-5)

    # adapting the two-top model adapts its clean ensemble, the model its room tops came from
    again, again_card = adapt_mod.adaptable(loaded, card)
    assert again_card.classes == clean_card.classes and "two_tops" not in again_card.extra
    assert again.open_set is None
    again_path = save_checkpoint(tmp_path / "again.safetensors", again, again_card)  # what adapt would save
    with torch.no_grad():
        assert torch.allclose(torch.log_softmax(again(waves)[0], 1), want_clean, atol=1e-5)
        assert torch.allclose(torch.log_softmax(load_checkpoint(again_path)[0](waves)[0], 1), want_clean, atol=1e-5)

    # an adapted model that was not made from this clean one is refused, naming the weight
    with torch.no_grad():
        adapt_mod._members(adapted)[-1].backbone.net._blocks[3]._depthwise_conv.weight.add_(1e-3)
    with pytest.raises(
        CheckpointError, match=rf"network {members - 1}: backbone\.net\._blocks\.3\._depthwise_conv\.weight differs"
    ):
        adapt_mod.combine_tops(clean, clean_card, adapted, adapted_card, 1.0)


def test_class_gate_names_a_sound_over_a_steady_floor_with_the_room_tops(tmp_path):
    """ClassGate: a clip alone keeps the clean tops' names; the same clip over a steady hiss 6 dB
    under it (a quiet room's floor) is named mostly by the room tops; p(background) is the room tops'
    either way; the exported graph does the same, and ship_model.py --class-gate writes it into the card."""
    from soundwatch.engines import create_engine
    from soundwatch.models.checkpoint import save_checkpoint
    from soundwatch.models.soundclr import ClassGate

    clean_path, adapted_path = _ensembles(tmp_path)
    clean, clean_card = load_checkpoint(clean_path)
    adapted, adapted_card = load_checkpoint(adapted_path)
    clip = _clip(ROOSTER)
    hiss = np.random.default_rng(0).standard_normal(len(clip))
    hiss *= np.sqrt(np.mean(clip**2) / np.mean(hiss**2)) / 10 ** (6 / 20)
    waves = torch.from_numpy(np.stack([clip, clip + hiss]).astype(np.float32))
    with torch.no_grad():
        named_clean, card = adapt_mod.combine_tops(clean, clean_card, adapted, adapted_card, 1.0)
        named_room, _ = adapt_mod.combine_tops(clean, clean_card, adapted, adapted_card, 0.0)
        by_clean, by_room = named_clean(waves)[0], named_room(waves)[0]
        named_clean.class_gate = ClassGate()
        spec = named_clean.frontend(waves)
        share = ClassGate().share(spec, 80.0)
        got = named_clean(waves)[0]
    assert share[0] > 0.05 and share[1] < 0.02  # the clip has bins far under its peak; over hiss, few
    w = torch.sigmoid((share - 0.02) / 0.005)
    assert w[0] > 0.99 and w[1] < 0.5
    assert torch.allclose(got[0], by_clean[0], atol=1e-3)  # alone: the clean tops' names
    assert torch.allclose(got[:, -1], by_room[:, -1], atol=1e-5)  # p(background): the room tops'
    events = by_room[1, :-1] - torch.logsumexp(by_room[1, :-1], 0)
    names = torch.log_softmax(w[1] * (by_clean[1, :-1] - torch.logsumexp(by_clean[1, :-1], 0)) + (1 - w[1]) * events, 0)
    assert torch.allclose(got[1, :-1] - torch.logsumexp(got[1, :-1], 0), names, atol=1e-4)

    path = save_checkpoint(tmp_path / "plain.safetensors", named_room, card)  # class_weight 1 in its card
    out = tmp_path / "gated.safetensors"
    script = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(path), "--class-gate", "0.02", "--status", "gated", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    loaded, loaded_card = load_checkpoint(out)
    assert loaded_card.extra["two_tops"]["class_gate"] == {"below_db": 50.0, "share_at": 0.02, "width": 0.005}
    with torch.no_grad():
        again = loaded(waves)[0]
    assert torch.allclose(again, got, atol=0.05)  # stored in fp16
    onnx_out = create_engine("onnx", out, engines_dir=tmp_path / "engines").infer(waves.numpy())
    assert np.allclose(onnx_out, again.numpy(), atol=1e-3)
    one_top = subprocess.run(
        [sys.executable, str(script), str(clean_path), "--class-gate", "0.02", "--status", "x", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert one_top.returncode != 0 and "two-top model" in one_top.stderr and "Traceback" not in one_top.stderr


@pytest.mark.parametrize("members", [2, 1])
def test_ship_script_ships_two_tops(tmp_path, members):
    import subprocess
    import sys
    from pathlib import Path

    clean_path, adapted_path = _ensembles(tmp_path, members)
    out = tmp_path / "shipped.safetensors"
    script = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"
    args = [sys.executable, str(script), str(clean_path), "--room-tops", str(adapted_path), "--status", "two tops"]
    proc = subprocess.run([*args, "--class-weight", "0.5", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    model, card = load_checkpoint(out)
    assert card.extra["two_tops"]["class_weight"] == 0.5 and model.class_weight == 0.5
    assert card.extra["shipped"]["room_tops_sha256"] and card.extra["shipped"]["dtype"] == "float16"
    assert card.members == members and len(model.rooms) == members
    if members == 1:  # one network's two tops: the exported graph gives what torch gives
        from soundwatch.engines import create_engine

        waves = torch.from_numpy(np.stack([_clip(ROOSTER), np.zeros(5 * RATE)]).astype(np.float32))
        with torch.no_grad():
            want = model(waves)[0].numpy()
        got = create_engine("onnx", out, engines_dir=tmp_path / "engines").infer(waves.numpy())
        assert np.allclose(got, want, atol=1e-3)
    bad = subprocess.run([*args, "--class-weight", "1.5", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "class_weight" in bad.stderr


def test_hard_negative_mining_trains_on_the_backgrounds_the_network_most_takes_for_events(corpus, tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    member = adapt_mod._members(model)[0]
    adapt_mod._extend_classifier(member)
    opts = _end_to_end_options(background_windows=10, hard_negatives=0.4, hard_pool=5)
    maker = adapt_mod.WindowMaker(corpus[0], corpus[1], "train", 16000, opts, np.random.default_rng(0))
    hard, hard_p, pool_p = adapt_mod.hard_backgrounds(model.frontend, member, maker, opts, 50)
    assert len(hard) == 4 and len(pool_p) == 20
    assert np.array_equal(hard_p, np.sort(pool_p)[::-1][:4])  # the four highest of twenty candidates
    rescored = adapt_mod.event_scores(model.frontend, member, np.stack(hard), 50)
    assert np.allclose(rescored, hard_p, atol=1e-5) and hard_p[-1] > np.median(pool_p)
    # an epoch's background windows: the mined ones (labelled background) and the rest fresh
    batches = list(adapt_mod.training_windows(np.zeros((0, 16000)), np.zeros(0), maker, opts, 50, 64, hard))
    waves, y = batches[0][0], batches[0][1]
    assert len(y) == 10 and set(y) == {50}
    assert sum(any(np.allclose(w, h) for w in waves) for h in hard) == 4
    with pytest.raises(UserError, match="needs --end-to-end"):
        adapt_mod.adapt(
            tiny_checkpoint, None, [2], corpus[0], corpus[1], Path("x"), dataclasses.replace(opts, end_to_end=False)
        )


def test_end_to_end_distillation_keeps_the_clean_clips_class_distribution(tmp_path, corpus, tiny_checkpoint):
    """Retraining the trunk moves the clean clips' 50-class distribution; distilling from the network
    as it was keeps it closer (a bigger --distill, closer still)."""
    _, sub = _fold2_clips(24)
    before, _ = load_checkpoint(tiny_checkpoint)
    waves = np.asarray(sub.waves, np.float32)
    teacher = torch.log_softmax(torch.from_numpy(adapt_mod.embeddings(before, waves)[0]), 1)
    drift, records = {}, {}
    for weight in (0.0, 5.0):
        out = tmp_path / f"d{weight}.safetensors"
        epochs = []
        opts = _end_to_end_options(epochs=2, background_windows=16, batch_size=16, lr=3e-3, distill=weight)
        adapt_mod.adapt(tiny_checkpoint, sub, [2], corpus[0], corpus[1], out, opts, on_epoch=epochs.append)
        after, _ = load_checkpoint(out)
        after.open_set = None  # the network's own classes, without the gate
        student = torch.log_softmax(torch.from_numpy(adapt_mod.embeddings(after, waves)[0])[:, :-1], 1)
        drift[weight] = float(torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean"))
        records[weight] = epochs
    assert "distill" in records[5.0][-1] and "distill" not in records[0.0][-1]
    assert drift[5.0] < 0.7 * drift[0.0], drift
