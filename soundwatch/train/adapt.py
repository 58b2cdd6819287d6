"""Adapt a trained SoundCLR to real rooms: events over backgrounds, a background class, open-set rejection.

A network trained on isolated ESC-50 clips has never heard an event over speech or music,
and its closed 50-way softmax must name one of 50 sounds for every window. ``adapt``
fine-tunes it on windows made for the room:

- **clean** training clips (the folds it was trained on), so clean accuracy is kept;
- **mixed**: each clip's active part placed at a random position of a 5 s window of a
  train-split background (speech, music, TV-like mix, quiet room; ``Backgrounds`` of the
  scene mixer) at a random event-to-background ratio (RMS of the event over RMS of the
  background under it, as the benchmark measures it), labelled with the clip's class; at
  least ``min_visible_s`` of the event lies inside the window, as in the first sliding window
  that hears it;
- **background**: pure train-split background windows, labelled with a new last class
  ``background`` ("none of the 50").

The loss is SoundCLR's hybrid (SupCon on the projection + cross-entropy, ``alpha``). On a
CPU budget only the top of each backbone is trained (EfficientNet-Lite0: its last MBConv
block and head convolution, with the classifier and a fresh projection head): the windows
are run once through the frozen lower layers and their feature maps cached, so an epoch
costs seconds. BatchNorm statistics stay frozen. The classifier keeps its 50 rows and gains
the background row (initialised to zero), so training starts from the model's own behaviour.

With ``end_to_end`` every layer is trained instead, on windows made afresh every epoch (every
clip clean, ``mixed_per_clip`` new mixtures of each, ``background_windows`` new background
windows): no bank, so the network cannot fit a fixed set of mixtures, and the clean clips in
every epoch hold its clean accuracy. With ``hard_negatives`` a share of each epoch's background windows
is mined: the ones the network, as it is at the epoch's start, most takes for an event, out of
``hard_pool`` times as many fresh candidates (music that sounds like church bells, TV laughter), so the
background class learns where it is weakest. Retraining the trunk costs clean accuracy (run 3:
83.75% on ESC-50 fold 1 against 85.50%); ``distill`` keeps each network's 50-class distribution on
the clean clips close to what it was before (the teacher is a frozen copy of it). It costs a full
forward and backward pass per window (about 1.8 min a network per epoch of 1600 clips, one mixture
each and 800 backgrounds, on 2 CPU cores; seconds on a GPU). BatchNorm statistics stay frozen here
too, and the prototypes come from the clips and one fresh mixture of each.

Then the open-set gate (``OpenSet``): per-class prototypes are the normalised mean embedding
of each class's clean and mixed training windows; ``tau`` and ``sharpness`` are chosen on
the **validation** split of the background corpus (val backgrounds, events mixed into them):
``tau`` is the ``gate_quantile`` quantile of the event windows' highest prototype
similarity, where the gate passes half; it passes 88% at the event windows' median (and 12%
as far below ``tau`` as the median is above it). Everything is seeded; the card records the recipe.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from soundwatch.data.scenes import SAMPLE_RATE, TYPES, Backgrounds, active_span, db
from soundwatch.dsp.clips import center_fit
from soundwatch.engines.base import softmax
from soundwatch.errors import CheckpointError, UserError
from soundwatch.labels import BACKGROUND_LABEL
from soundwatch.models.checkpoint import ModelCard, load_checkpoint, save_state_atomic
from soundwatch.models.soundclr import (
    PROJ_DIM,
    OpenSet,
    SoundCLR,
    SoundCLREnsemble,
    TwoTopEnsemble,
    ensemble_embedding,
    spec_to_image,
)
from soundwatch.train.losses import training_loss

log = logging.getLogger(__name__)

KIND_CLEAN, KIND_MIXED, KIND_BACKGROUND = 0, 1, 2


@dataclass
class AdaptOptions:
    mixed_per_clip: int = 4
    background_windows: int = 4000
    background_shares: tuple[float, ...] = (0.35, 0.3, 0.25, 0.1)  # of scenes.TYPES: speech, music, tv, quiet
    mix_shares: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
    ebr_db: tuple[float, float] = (-9.0, 15.0)
    min_visible_s: float = 1.0
    stream_s: float = 120.0  # length of each generated background stream
    streams_per_type: int = 12
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-4  # the trained top of the backbone
    head_lr: float = 3e-3  # classifier, projection head, logit scale
    weight_decay: float = 1e-3
    alpha: float = 0.5
    temperature: float = 0.05
    distill: float = 0.0  # weight of keeping the original model's class distribution on clean clips (0: off)
    distill_temperature: float = 2.0
    keep_classes: bool = False  # keep the 50 class rows (and logit scale) as they were: only background is learnt
    end_to_end: bool = False  # train every layer on windows made afresh every epoch (no bank)
    hard_negatives: float = 0.0  # end-to-end: share of each epoch's background windows mined as the hardest
    hard_pool: int = 4  # ... of this many times as many fresh candidates, scored by the network being trained
    gate_quantile: float = 0.05
    val_events: int = 800
    val_backgrounds: int = 800
    seed: int = 0


# -- windows -------------------------------------------------------------------------------------


class WindowMaker:
    """5 s training windows from ESC-50 clips and background streams of one corpus split, seeded."""

    def __init__(
        self, corpus_dir: Path, manifest: Path, split: str, window: int, opts: AdaptOptions, rng: np.random.Generator
    ):
        self.window, self.opts, self.rng = window, opts, rng
        bgs = Backgrounds(corpus_dir, manifest, split)
        n = int(opts.stream_s * SAMPLE_RATE)
        self.streams: dict[str, list[np.ndarray]] = {}
        for kind in TYPES:
            count = max(1, opts.streams_per_type // (3 if kind == "quiet" else 1))
            self.streams[kind] = [bgs.make(kind, rng, n)[0].astype(np.float32) for _ in range(count)]

    def background(self, kind: str) -> np.ndarray:
        stream = self.streams[kind][self.rng.integers(len(self.streams[kind]))]
        start = int(self.rng.integers(0, len(stream) - self.window))
        return stream[start : start + self.window].astype(np.float64)

    def kind(self, shares: tuple[float, ...]) -> str:
        return TYPES[int(self.rng.choice(len(TYPES), p=np.asarray(shares) / np.sum(shares)))]

    def mixed(self, clip: np.ndarray) -> tuple[np.ndarray, float]:
        """``clip``'s active part over a background window at a random ratio; (window, ratio dB)."""
        bg = self.background(self.kind(self.opts.mix_shares))
        a, b = active_span(clip)
        event = clip[a:b].astype(np.float64)
        if len(event) == 0:
            return bg, float("nan")
        w = self.window
        if len(event) > w:
            s = int(self.rng.integers(0, len(event) - w + 1))
            event = event[s : s + w]
        visible = min(len(event), int(self.opts.min_visible_s * SAMPLE_RATE))
        pos = int(self.rng.integers(visible - len(event), w - visible + 1))
        lo, hi = max(pos, 0), min(pos + len(event), w)
        part = event[lo - pos : hi - pos]
        ebr = float(self.rng.uniform(*self.opts.ebr_db))
        gain_db = ebr - (db(part) - db(bg[lo:hi]))
        out = bg.copy()
        out[lo:hi] += part * 10 ** (gain_db / 20)
        peak = np.abs(out).max()
        return out / peak * 0.99 if peak > 0.99 else out, ebr


@dataclass
class Bank:
    """Cached lower-layer features of the training windows, per network."""

    features: list[torch.Tensor]  # per member: (n, C, H, W) float16
    labels: np.ndarray  # (n,) class index; background = n_events
    kinds: np.ndarray  # (n,) KIND_*
    ebrs: np.ndarray  # (n,) dB, nan where not mixed


BANK_OPTIONS = (
    "mixed_per_clip",
    "background_windows",
    "background_shares",
    "mix_shares",
    "ebr_db",
    "min_visible_s",
    "stream_s",
    "streams_per_type",
    "seed",
)


def save_bank(path: Path, bank: Bank, key: dict) -> None:
    save_state_atomic(
        {"key": key, "features": bank.features, "labels": bank.labels, "kinds": bank.kinds, "ebrs": bank.ebrs}, path
    )


def load_bank(path: Path, key: dict) -> Bank | None:
    """The bank saved at ``path`` if it was made with ``key`` (model, folds, window options), else None."""
    if not Path(path).is_file():
        return None
    data = torch.load(path, weights_only=False)
    if json.loads(json.dumps(data.get("key"))) != json.loads(json.dumps(key)):
        log.info("adapt: %s was made for other settings; building the windows afresh", path)
        return None
    return Bank(data["features"], data["labels"], data["kinds"], data["ebrs"])


# -- the backbone split ------------------------------------------------------------------------


def _split(member: SoundCLR) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """(frozen lower layers: image -> feature map, trained top: feature map -> pooled feature)."""
    backbone = member.backbone
    net = getattr(backbone, "net", None)
    if net is None or not hasattr(net, "_blocks"):  # small test networks: train the whole backbone
        return (lambda image: image), backbone

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.conv_head, self.bn1 = net._blocks[-1], net._conv_head, net._bn1
            self.act = net._swish
            rate = net._global_params.drop_connect_rate or 0.0
            self.drop = rate * (len(net._blocks) - 1) / len(net._blocks)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(x, drop_connect_rate=self.drop if self.training else 0.0)
            return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))

    return backbone.trunk, Top()  # the frozen lower layers: stem and all but the last MBConv block


def _members(model: SoundCLR | SoundCLREnsemble) -> list[SoundCLR]:
    return list(model.members) if isinstance(model, SoundCLREnsemble) else [model]


def _device(module: nn.Module) -> torch.device:
    """Where ``module``'s weights are (``adapt(device=...)`` moves the model there once)."""
    return next(module.parameters()).device


def _to(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device`` (sharing its memory where that is the host)."""
    return torch.as_tensor(x).to(device)


@torch.no_grad()
def build_bank(model, waves_iter, n_events: int, log_every: int = 2000) -> Bank:
    """Run ``(waves, labels, kinds, ebrs, clip indices)`` batches through every member's frozen lower layers."""
    members = _members(model)
    lowers = [_split(m)[0] for m in members]
    feats: list[list[torch.Tensor]] = [[] for _ in members]
    labels, kinds, ebrs = [], [], []
    done, t0 = 0, time.monotonic()
    device = _device(model)
    for waves, y, k, e, _ in waves_iter:
        spec = model.frontend(_to(np.asarray(waves, np.float32), device))
        image = spec_to_image(spec)
        for i, lower in enumerate(lowers):
            feats[i].append(lower(image).to(torch.float16).cpu())  # the bank stays in host memory
        labels.append(y), kinds.append(k), ebrs.append(e)
        done += len(y)
        if done // log_every != (done - len(y)) // log_every:
            log.info("adapt: %d windows through the frozen layers (%.0f s)", done, time.monotonic() - t0)
    return Bank([torch.cat(f) for f in feats], np.concatenate(labels), np.concatenate(kinds), np.concatenate(ebrs))


def training_windows(
    clips: np.ndarray,
    clip_labels: np.ndarray,
    maker: WindowMaker,
    opts: AdaptOptions,
    n_events: int,
    batch: int = 64,
    hard: list[np.ndarray] | None = None,
):
    """Batches of (waves, labels, kinds, ebrs, clip indices): every clip clean, ``mixed_per_clip`` mixtures
    of each, ``background_windows`` pure background windows (the ``hard`` ones given, the rest fresh), in
    a seeded shuffled order. A window's clip index is the clip it holds (-1 for background)."""
    hard = hard or []
    if len(hard) > opts.background_windows:
        raise ValueError(f"{len(hard)} hard background windows, more than background_windows")
    plan = [(KIND_CLEAN, i) for i in range(len(clips))]
    plan += [(KIND_MIXED, i) for i in range(len(clips)) for _ in range(opts.mixed_per_clip)]
    plan += [(KIND_BACKGROUND, j) for j in range(len(hard))]
    plan += [(KIND_BACKGROUND, -1)] * (opts.background_windows - len(hard))
    order = maker.rng.permutation(len(plan))
    for s in range(0, len(order), batch):
        waves, y, k, e, c = [], [], [], [], []
        for j in order[s : s + batch]:
            kind, i = plan[j]
            c.append(i if kind != KIND_BACKGROUND else -1)
            if kind == KIND_CLEAN:
                waves.append(np.asarray(clips[i], np.float64)), y.append(clip_labels[i]), e.append(np.nan)
            elif kind == KIND_MIXED:
                w, ebr = maker.mixed(np.asarray(clips[i], np.float64))
                waves.append(w), y.append(clip_labels[i]), e.append(ebr)
            elif i >= 0:
                waves.append(np.asarray(hard[i], np.float64)), y.append(n_events), e.append(np.nan)
            else:
                waves.append(fresh_background(maker, opts)), y.append(n_events), e.append(np.nan)
            k.append(kind)
        yield np.stack(waves), np.array(y, np.int64), np.array(k, np.int64), np.array(e), np.array(c, np.int64)


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """``batches`` made by a helper thread up to ``depth`` ahead, in the same order: the next batch is mixed
    on the CPU while the network trains on this one (on a GPU the step no longer waits for the mixing).
    The helper is the only user of the window maker's random state while it runs, and it has finished when
    the batches are exhausted, so a run is as repeatable as without it. An error in the helper is raised
    here; leaving early stops the helper."""
    q: queue.Queue = queue.Queue(depth)
    end, failure, stop = object(), [], threading.Event()

    def work() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(batch)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            failure.append(exc)
        finally:
            q.put(end)

    helper = threading.Thread(target=work, name="adapt-windows", daemon=True)
    helper.start()
    try:
        while (batch := q.get()) is not end:
            yield batch
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while helper.is_alive():  # free a helper blocked on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        helper.join()


def fresh_background(maker: WindowMaker, opts: AdaptOptions) -> np.ndarray:
    """A new pure background window of a type drawn by ``background_shares``, at a random gain of +-10 dB."""
    bg = maker.background(maker.kind(opts.background_shares))
    return bg * 10 ** (maker.rng.uniform(-10, 10) / 20)


@torch.no_grad()
def _class_logits(frontend: nn.Module, member: SoundCLR, waves: np.ndarray, batch: int = 64) -> np.ndarray:
    """One network's class logits for each of ``waves``, in eval mode, in batches."""
    member.eval()
    device, out = _device(member), []
    for s in range(0, len(waves), batch):
        image = spec_to_image(frontend(_to(np.asarray(waves[s : s + batch], np.float32), device)))
        out.append(member.classify(nn.functional.normalize(member.backbone(image), dim=1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, member.classifier.out_features), np.float32)


def event_scores(
    frontend: nn.Module, member: SoundCLR, waves: np.ndarray, n_events: int, batch: int = 64
) -> np.ndarray:
    """One network's highest event probability (background excluded) for each of ``waves``, in eval mode."""
    logits = torch.from_numpy(_class_logits(frontend, member, waves, batch))
    return torch.softmax(logits, dim=1)[:, :n_events].max(1).values.numpy()


def hard_backgrounds(
    frontend: nn.Module, member: SoundCLR, maker: WindowMaker, opts: AdaptOptions, n_events: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Hard-negative mining: ``hard_pool`` x (``hard_negatives`` x ``background_windows``) fresh background
    windows scored by ``member`` as it is now; (the highest-scoring share, hardest first, their event
    scores, every candidate's score). What the network most takes for an event is what it trains on."""
    n = int(round(opts.hard_negatives * opts.background_windows))
    if n == 0:
        return [], np.zeros(0), np.zeros(0)
    pool = np.stack([fresh_background(maker, opts).astype(np.float32) for _ in range(n * opts.hard_pool)])
    scores = event_scores(frontend, member, pool, n_events)
    pick = np.argsort(-scores, kind="stable")[:n]
    return list(pool[pick]), scores[pick], scores  # copies: the rest of the pool is freed


# -- training -------------------------------------------------------------------------------------


def _extend_classifier(member: SoundCLR) -> None:
    """Give the classifier a zero-initialised background row (its 50 rows unchanged)."""
    old = member.classifier
    new = nn.Linear(old.in_features, old.out_features + 1)
    with torch.no_grad():
        new.weight.zero_(), new.bias.zero_()
        new.weight[:-1].copy_(old.weight), new.bias[:-1].copy_(old.bias)
        new.bias[-1] = old.bias.mean()
    member.classifier = new


class _HybridFit:
    """What both ways of training a network share: a fresh projection head, AdamW over the trained
    layers (``lr``) and the heads (``head_lr``) on a half-cosine schedule to 0 over ``steps``, the
    hybrid loss, and the running sums behind each epoch's record."""

    def __init__(self, member: SoundCLR, trained: list, opts: AdaptOptions, member_index: int, steps: int):
        torch.manual_seed(opts.seed * 1000 + member_index)
        self.projector = nn.Sequential(
            nn.Linear(member.embed_dim, member.embed_dim), nn.ReLU(inplace=True), nn.Linear(member.embed_dim, PROJ_DIM)
        ).to(_device(member))
        heads = [*member.classifier.parameters(), member.log_logit_scale, *self.projector.parameters()]
        self.optimizer = torch.optim.AdamW(
            [{"params": trained, "lr": opts.lr}, {"params": heads, "lr": opts.head_lr}],
            weight_decay=opts.weight_decay,
        )
        self.base = [g["lr"] for g in self.optimizer.param_groups]
        self.member, self.opts, self.index, self.steps, self.step = member, opts, member_index, steps, 0

    def start_epoch(self) -> None:
        self.sums, self.seen, self.correct, self.t0 = {}, 0, 0, time.monotonic()

    def loss(self, pooled: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(hybrid loss, its parts, logits) of a batch's pooled features; sets this step's learning rates."""
        scale = 0.5 * (1 + np.cos(np.pi * self.step / self.steps))  # half cosine to 0
        for g, lr in zip(self.optimizer.param_groups, self.base):
            g["lr"] = lr * scale
        emb = nn.functional.normalize(pooled, dim=1)
        logits = self.member.classify(emb)
        proj = nn.functional.normalize(self.projector(emb), dim=1)
        loss, parts = training_loss("hybrid", logits, proj, y, self.opts.alpha, self.opts.temperature)
        return loss, parts, logits

    def update(self, loss: torch.Tensor, parts: dict, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * len(y)
        self.correct += int((logits.argmax(1) == y).sum())
        self.seen += len(y)

    def state_dict(self) -> dict:
        return {"projector": self.projector.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.projector.load_state_dict(state["projector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def record(self, epoch: int, **extra) -> dict:
        seen = max(self.seen, 1)
        return {
            "member": self.index,
            "epoch": epoch,
            **{k: round(v / seen, 5) for k, v in self.sums.items()},
            "train_acc": round(self.correct / seen, 5),
            **extra,
            "epoch_s": round(time.monotonic() - self.t0, 2),
        }


def _with_distill(
    loss: torch.Tensor, parts: dict, student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor, opts
) -> torch.Tensor:
    """``loss`` plus ``distill`` x the KL divergence (temperature ``distill_temperature``, scaled by its
    square) from the teacher's 50-class logits to the student's on the batch's clean clips (``keep``),
    weighted by their share of the batch; the KL goes in ``parts``."""
    t = opts.distill_temperature
    kl = (
        nn.functional.kl_div(
            nn.functional.log_softmax(student / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )
    parts["distill"] = float(kl.detach())
    return loss + opts.distill * kl * keep.float().mean()


def _frozen_batchnorm(module: nn.Module) -> None:
    module.train()
    for m in module.modules():  # BatchNorm statistics stay those of the trained network
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def train_member(
    member: SoundCLR,
    features: torch.Tensor,
    labels: np.ndarray,
    kinds: np.ndarray,
    opts: AdaptOptions,
    member_index: int,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train one network's top, classifier and a fresh projection head on its cached features.

    Besides the hybrid loss, ``distill`` keeps the network's 50-class distribution on the clean
    clips close to what it was before (learning without forgetting, Li & Hoiem 2016): the top is
    fitted to mixtures and backgrounds without unlearning what made it right on clean clips.
    (The background row starts at zero, so the teacher is the original network's 50 logits.)"""
    _, top = _split(member)
    device = _device(member)
    clean = torch.from_numpy(kinds == KIND_CLEAN)
    teacher = None
    if opts.distill > 0:
        with torch.no_grad():  # the original network's view of the clean clips: what "without forgetting" keeps
            top.eval()
            teacher = torch.cat(  # on the device, as the end-to-end teacher's logits are
                [
                    member.classify(nn.functional.normalize(top(features[s : s + 512].to(device).float()), dim=1))[
                        :, :-1
                    ]
                    for s in range(0, len(labels), 512)
                ]
            )
    steps = max(1, (len(labels) + opts.batch_size - 1) // opts.batch_size) * opts.epochs
    fit = _HybridFit(member, list(top.parameters()), opts, member_index, steps)
    kept = [
        member.classifier.weight[:-1].detach().clone(),
        member.classifier.bias[:-1].detach().clone(),
        member.log_logit_scale.detach().clone(),
    ]
    y_all = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(opts.seed * 1000 + member_index)
    history = []
    for epoch in range(opts.epochs):
        _frozen_batchnorm(top)
        order = torch.randperm(len(labels), generator=gen)
        fit.start_epoch()
        for s in range(0, len(order), opts.batch_size):
            idx = order[s : s + opts.batch_size]
            if len(idx) < 2:
                continue
            y = y_all[idx].to(device)
            loss, parts, logits = fit.loss(top(features[idx].to(device).float()), y)
            keep = clean[idx]
            if teacher is not None and keep.any():
                keep = keep.to(device)
                loss = _with_distill(loss, parts, logits[keep, :-1], teacher[idx.to(device)][keep], keep, opts)
            fit.update(loss, parts, logits, y)
            if opts.keep_classes:
                with torch.no_grad():
                    member.classifier.weight[:-1].copy_(kept[0]), member.classifier.bias[:-1].copy_(kept[1])
                    member.log_logit_scale.copy_(kept[2])
        history.append(fit.record(epoch))
        if on_epoch:
            on_epoch(history[-1])
    top.eval()
    return history


def train_member_end_to_end(
    frontend: nn.Module,
    member: SoundCLR,
    waves: np.ndarray,
    labels: np.ndarray,
    maker: WindowMaker,
    opts: AdaptOptions,
    member_index: int,
    n_events: int,
    on_epoch: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    save: Callable[[int, "_HybridFit", list[dict]], None] | None = None,
    teacher: SoundCLR | None = None,
) -> list[dict]:
    """Train all of one network (backbone, classifier, a fresh projection head) with the hybrid loss on
    windows ``training_windows`` makes afresh every epoch from ``maker``. ``save(epochs_done, fit, history)``
    after every epoch; ``resume``: such a saved point (``epochs_done``, ``fit``) to continue from,
    with the network's weights and ``maker``'s random state already restored. ``teacher`` (with
    ``distill`` > 0): the network as it was before adaptation; on the clean clips of every batch the
    network keeps close to its 50-class distribution (learning without forgetting), because retraining
    the trunk otherwise costs clean accuracy (run 3: 83.75% on ESC-50 fold 1 against 85.50%)."""
    per_epoch = len(waves) * (1 + opts.mixed_per_clip) + opts.background_windows
    steps = max(1, -(-per_epoch // opts.batch_size)) * opts.epochs
    fit = _HybridFit(member, list(member.backbone.parameters()), opts, member_index, steps)
    history, first = [], 0
    if resume is not None:
        fit.load_state_dict(resume["fit"])
        first = int(resume["epochs_done"])
    device = _device(member)
    taught_all = None
    if teacher is not None:  # its 50-class view of every clean clip: fixed (frozen, eval mode), so computed once
        taught_all = torch.from_numpy(_class_logits(frontend, teacher, waves))[:, :-1].to(device)
    for epoch in range(first, opts.epochs):
        mined = {}
        hard, hard_p, pool_p = hard_backgrounds(frontend, member, maker, opts, n_events)
        if len(hard):
            mined = {
                "hard_windows": len(hard),
                "hard_event_p_median": round(float(np.median(hard_p)), 5),
                "pool_event_p_median": round(float(np.median(pool_p)), 5),
            }
        _frozen_batchnorm(member)
        fit.start_epoch()
        windows = prefetched(training_windows(waves, labels, maker, opts, n_events, opts.batch_size, hard))
        for batch, y, kinds, _, clip in windows:
            if len(y) < 2:
                continue
            with torch.no_grad():
                image = spec_to_image(frontend(_to(np.asarray(batch, np.float32), device)))
            target = _to(y, device)
            loss, parts, logits = fit.loss(member.backbone(image), target)
            clean = kinds == KIND_CLEAN
            if taught_all is not None and clean.any():
                keep = _to(clean, device)
                taught = taught_all[_to(clip[clean], device)]
                loss = _with_distill(loss, parts, logits[keep, :-1], taught, keep, opts)
            fit.update(loss, parts, logits, target)
        del hard
        history.append(fit.record(epoch, windows=fit.seen, **mined))
        if save:
            save(epoch + 1, fit, history)
        if on_epoch:
            on_epoch(history[-1])
    member.eval()
    return history


class _EndToEndState:
    """An end-to-end run's progress, saved after every epoch of every network to ``<out>.partial.pt``
    (atomically) so ``resume`` continues exactly where a stopped run was; removed once the model is
    written. A run with other options, folds or starting weights is refused, not mixed in."""

    def __init__(self, out: Path, key: dict, resume: bool):
        self.path = Path(out).with_name(Path(out).name + ".partial.pt")
        self.key, self.state = key, None
        if resume:
            if not self.path.is_file():
                raise UserError(f"--resume: no stopped run to continue ({self.path} does not exist)")
            self.state = torch.load(self.path, map_location="cpu", weights_only=False)
            if self.state["key"] != key:
                differ = sorted(k for k in {*key, *self.state["key"]} if key.get(k) != self.state["key"].get(k))
                raise UserError(
                    f"--resume: {self.path} is a run with other settings ({', '.join(differ)}); "
                    "give the same options, or start afresh without --resume"
                )

    def restore(self, members: list, maker: "WindowMaker") -> tuple[int, dict | None, list[dict]]:
        """(the network to train next, its resume point or None, the history so far); loads the weights
        of the networks already trained and the window maker's random state."""
        if self.state is None:
            return 0, None, []
        for member, weights in zip(members, self.state["members"]):
            member.load_state_dict(weights)
        maker.rng.bit_generator.state = self.state["maker_rng"]
        torch.set_rng_state(self.state["torch_rng"])
        index = self.state["member"]
        log.info("adapt: resuming at network %d, epoch %d", index, self.state["epochs_done"])
        return index, {"epochs_done": self.state["epochs_done"], "fit": self.state["fit"]}, self.state["history"]

    def save(self, members: list, index: int, epochs_done: int, fit: "_HybridFit", maker, history: list) -> None:
        state = {
            "key": self.key,
            "member": index,
            "epochs_done": epochs_done,
            "members": [m.state_dict() for m in members[: index + 1]],
            "fit": fit.state_dict(),
            "maker_rng": maker.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "history": history,
        }
        save_state_atomic(state, self.path)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def prototypes_from_windows(
    model, waves: np.ndarray, labels: np.ndarray, maker: WindowMaker, n_events: int
) -> torch.Tensor:
    """Per-class normalised mean of the model's embedding over the class's clips and one fresh mixture of each."""
    mixed = np.stack([maker.mixed(np.asarray(w, np.float64))[0] for w in waves])
    sums = None
    for batch in (waves, mixed):
        _, emb = embeddings(model, batch)
        if sums is None:
            sums = torch.zeros(n_events, emb.shape[1], dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(np.asarray(labels, np.int64)), torch.from_numpy(emb).double())
    return nn.functional.normalize(sums, dim=1).float()


@torch.no_grad()
def embeddings(model, waves: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, unit embeddings) of ``model`` for (n, samples) waveforms."""
    model.eval()
    device, outs, embs = _device(model), [], []
    for s in range(0, len(waves), batch):
        logits, emb = model(_to(np.asarray(waves[s : s + batch], np.float32), device))
        outs.append(logits.cpu().numpy()), embs.append(emb.cpu().numpy())
    return np.concatenate(outs), np.concatenate(embs)


def prototypes_from_bank(model, bank: Bank, n_events: int, batch: int = 256) -> torch.Tensor:
    """Per-class normalised mean of the model's (ensemble) embedding over the class's clean and mixed windows."""
    members = _members(model)
    device = _device(model)
    tops = [_split(m)[1].eval() for m in members]
    sums = torch.zeros(n_events, sum(m.embed_dim for m in members), dtype=torch.float64)
    with torch.no_grad():
        keep = np.flatnonzero(bank.labels < n_events)
        for s in range(0, len(keep), batch):
            idx = torch.from_numpy(keep[s : s + batch])
            emb = ensemble_embedding(
                [nn.functional.normalize(t(f[idx].to(device).float()), dim=1) for t, f in zip(tops, bank.features)]
            ).cpu()
            sums.index_add_(0, torch.from_numpy(bank.labels[keep[s : s + batch]]), emb.double())
    return nn.functional.normalize(sums, dim=1).float()


def calibrate_gate(similarity_events: np.ndarray, quantile: float) -> tuple[float, float]:
    """(tau, sharpness) from the event windows' highest prototype similarities: ``tau`` is their
    ``quantile`` quantile, where the gate passes 50%; with spread = median - tau (at least 0.01)
    it passes 88% at the median and 12% one spread below ``tau``."""
    tau = float(np.quantile(similarity_events, quantile))
    spread = max(float(np.median(similarity_events)) - tau, 0.01)
    return tau, float(2.0 / spread)  # sigmoid(+-2) = 0.88 / 0.12


def adapt(
    checkpoint: Path,
    clips,
    train_folds: list[int],
    corpus_dir: Path,
    manifest: Path,
    out: Path,
    opts: AdaptOptions,
    on_epoch: Callable[[dict], None] | None = None,
    commit: str = "unknown",
    bank_file: Path | None = None,
    resume: bool = False,
    device: str = "cpu",
) -> dict:
    """Adapt ``checkpoint`` on ``clips`` of ``train_folds``; write the adapted model to ``out``; a report.

    ``bank_file``: keep the cached training windows there (and reuse them when the model, folds
    and window options match), so trying training options costs no second pass of the lower layers.
    ``device``: where the networks run ("cpu", "cuda"); the windows are made on the host either way,
    and the model is written from the host."""
    from soundwatch.models.checkpoint import file_sha256, save_checkpoint

    if opts.hard_negatives and not opts.end_to_end:
        raise UserError("--hard-negatives mines background windows each epoch: it needs --end-to-end")
    if not 0.0 <= opts.hard_negatives <= 1.0 or opts.hard_pool < 1:
        raise UserError("--hard-negatives is a share from 0 to 1 and --hard-pool at least 1")
    model, card = adaptable(*load_checkpoint(checkpoint))
    if BACKGROUND_LABEL in card.classes:
        raise UserError(f"{checkpoint} already has a {BACKGROUND_LABEL!r} class: adapt the model it came from")
    if list(clips.classes) != list(card.classes):
        raise UserError(f"{checkpoint} classifies other labels than {clips.name}'s")
    if clips.sample_rate != SAMPLE_RATE or card.sample_rate != SAMPLE_RATE:
        raise UserError(f"adapt works at {SAMPLE_RATE} Hz (the background corpus' rate)")
    if opts.end_to_end and (bank_file or opts.keep_classes):
        raise UserError(
            "end-to-end adaptation makes fresh windows every epoch and trains every layer: "
            "it takes no --bank or --keep-classes"
        )
    if resume and not opts.end_to_end:
        raise UserError("--resume continues an --end-to-end run (the other way caches its windows: --bank)")
    n_events = len(card.classes)
    window = card.window_samples
    idx = clips.indices(train_folds)
    if len(idx) == 0:
        raise UserError(f"no clips in folds {train_folds}")
    t0 = time.monotonic()
    waves = center_fit(np.asarray(clips.waves[idx]), window)
    members = _members(model)
    for member in members:  # a background row; the projection head is trained afresh and not kept
        _extend_classifier(member)
        member.projector = None
    model.to(device)
    history = []

    def run_key(options: dict) -> dict:  # what a saved bank or a stopped run must have been made with
        return {
            "checkpoint_sha256": file_sha256(checkpoint),
            "folds": list(train_folds),
            "clips": int(len(idx)),
            **options,
        }

    if opts.end_to_end:
        progress = _EndToEndState(out, run_key(asdict(opts)), resume)
        maker = WindowMaker(corpus_dir, manifest, "train", window, opts, np.random.default_rng(opts.seed))
        bank_s = time.monotonic() - t0
        # the teachers are the networks before adaptation (taken before a resumed run's weights are loaded)
        teachers = [copy.deepcopy(m).eval() if opts.distill > 0 else None for m in members]
        first, point, history = progress.restore(members, maker)
        for i, member in enumerate(members):
            if i < first:
                continue
            history += train_member_end_to_end(
                model.frontend,
                member,
                waves,
                clips.labels[idx],
                maker,
                opts,
                i,
                n_events,
                on_epoch,
                resume=point if i == first else None,
                save=lambda done, fit, so_far, i=i: progress.save(members, i, done, fit, maker, history + so_far),
                teacher=teachers[i],
            )
        model.eval()
        protos = prototypes_from_windows(model, waves, clips.labels[idx], maker, n_events)
    else:
        key = run_key({k: v for k, v in asdict(opts).items() if k in BANK_OPTIONS})
        bank = load_bank(bank_file, key) if bank_file else None
        if bank is None:
            maker = WindowMaker(corpus_dir, manifest, "train", window, opts, np.random.default_rng(opts.seed))
            bank = build_bank(model, training_windows(waves, clips.labels[idx], maker, opts, n_events), n_events)
            if bank_file:
                save_bank(bank_file, bank, key)
        bank_s = time.monotonic() - t0
        log.info("adapt: %d training windows cached in %.0f s", len(bank.labels), bank_s)
        for i, member in enumerate(members):
            history += train_member(member, bank.features[i], bank.labels, bank.kinds, opts, i, on_epoch)
        model.eval()
        protos = prototypes_from_bank(model, bank, n_events)
        del bank

    # the gate, on the validation split: val backgrounds, training-fold events mixed into them
    val_rng = np.random.default_rng(opts.seed + 1)
    val_maker = WindowMaker(corpus_dir, manifest, "val", window, opts, val_rng)
    pick = val_rng.choice(len(waves), size=min(opts.val_events, len(waves)), replace=False)
    val_events, ebrs = zip(*(val_maker.mixed(np.asarray(waves[i], np.float64)) for i in pick))
    val_events, ebrs = np.stack(val_events), np.array(ebrs)
    val_bg = np.stack(
        [val_maker.background(val_maker.kind(opts.background_shares)) for _ in range(opts.val_backgrounds)]
    )
    logits_ev, emb_ev = embeddings(model, val_events)  # the network without the gate, run once
    logits_bg, emb_bg = embeddings(model, val_bg)
    model.to("cpu")  # the gate is built, and the model written, on the host
    s_ev, s_bg = (emb_ev @ protos.numpy().T).max(1), (emb_bg @ protos.numpy().T).max(1)
    audible = ebrs >= 0
    tau, sharpness = calibrate_gate(s_ev[audible], opts.gate_quantile)
    model.open_set = OpenSet(n_events, protos.shape[1], tau, sharpness)
    model.open_set.prototypes.copy_(protos)
    with torch.no_grad():  # the gate on what the network gave: the same as running the gated model
        logp_ev_gated, logp_bg_gated = (
            model.open_set(torch.from_numpy(lg), torch.from_numpy(em)).numpy()
            for lg, em in ((logits_ev, emb_ev), (logits_bg, emb_bg))
        )
    labels_ev = clips.labels[idx][pick]
    report = {
        "bank_s": round(bank_s, 1),
        "wall_s": round(time.monotonic() - t0, 1),
        "windows": {
            "clean": int(len(waves)),
            "mixed": int(len(waves) * opts.mixed_per_clip),
            "background": opts.background_windows,
            **({"made_afresh": "every epoch"} if opts.end_to_end else {}),
        },
        "gate": {
            "tau": round(tau, 5),
            "sharpness": round(sharpness, 4),
            "quantile": opts.gate_quantile,
            "val_event_similarity_median": round(float(np.median(s_ev[audible])), 5),
            "val_background_similarity_median": round(float(np.median(s_bg)), 5),
            "val_backgrounds_below_tau": round(float(np.mean(s_bg < tau)), 4),
        },
        "val": {
            "event_windows": int(len(pick)),
            "background_windows": int(len(val_bg)),
            "event_accuracy_ebr_ge_0": round(float(np.mean(logp_ev_gated[audible].argmax(1) == labels_ev[audible])), 4),
            "event_accuracy_ebr_lt_0": round(
                float(np.mean(logp_ev_gated[~audible].argmax(1) == labels_ev[~audible])), 4
            ),
            "background_top_event_p_median_before_gate": round(float(np.median(softmax(logits_bg)[:, :-1].max(1))), 5),
            "background_top_event_p_median": round(float(np.median(np.exp(logp_bg_gated[:, :-1]).max(1))), 5),
            "background_called_background": round(float(np.mean(logp_bg_gated.argmax(1) == n_events)), 4),
        },
        "history_last": [h for h in history if h["epoch"] == opts.epochs - 1],
    }
    new_card = _serving_card(card, [*card.classes, BACKGROUND_LABEL])
    new_card.extra["open_set"] = {
        "tau": tau,
        "sharpness": sharpness,
        "prototypes": "normalised mean embedding of each class's clean and mixed training windows",
        "calibrated_on": "validation split of the background corpus",
    }
    new_card.extra["adapted"] = {
        "from": str(checkpoint),
        "from_sha256": file_sha256(checkpoint),
        "train_folds": train_folds,
        "options": asdict(opts),
        "commit": commit,
        "report": {k: v for k, v in report.items() if k != "history_last"},
    }
    save_checkpoint(out, model, new_card)
    if opts.end_to_end:
        progress.done()
    return report


def adaptable(model, card: ModelCard):
    """(model, card) to adapt: a two-top model (the default since 13406fd) gives its clean ensemble, the
    model its room tops were adapted from, with the card's provenance and the classes without background."""
    if not isinstance(model, TwoTopEnsemble):
        return model, card
    clean = _serving_card(card, [c for c in card.classes if c != BACKGROUND_LABEL])
    for key in ("open_set", "adapted", "two_tops"):
        clean.extra.pop(key, None)
    if len(model.clean.members) == 1:  # a two-top model of one network: that network, as a card of one says
        return model.clean.members[0].eval(), clean
    return model.clean.eval(), clean


def _serving_card(card: ModelCard, classes: list[str]) -> ModelCard:
    """A copy of ``card`` for a derived serving model (no projection head) with ``classes``; the copied
    provenance is kept, the old weights' digest is not."""
    new = ModelCard(
        arch=card.arch,
        classes=classes,
        sample_rate=card.sample_rate,
        window_s=card.window_s,
        frontend=card.frontend,
        proj_dim=card.proj_dim,
        members=card.members,
        projector=False,
        extra=copy.deepcopy(card.extra),
    )
    new.extra.pop("weights_sha256", None)
    return new


# -- two tops over one trunk -------------------------------------------------------------------

ROOM_TOP_PARTS = ("backbone.net._blocks.{last}.", "backbone.net._conv_head.", "backbone.net._bn1.")


def combine_tops(
    clean: SoundCLR | SoundCLREnsemble,
    clean_card: ModelCard,
    adapted: SoundCLR | SoundCLREnsemble,
    adapted_card: ModelCard,
    weight: float,
) -> tuple[TwoTopEnsemble, ModelCard]:
    """One ``TwoTopEnsemble`` from a clean model (one network or an ensemble) and the model ``adapt``
    made from it.

    ``adapt`` trains only the last stage of each network, so the two must share every other weight
    (checked: a CheckpointError names the first that differs). The clean tops keep naming the sound
    (``weight`` 1) or share it with the room tops (``weight`` < 1); the room tops, their classifier over
    events + background and the open-set gate come from ``adapted``. One network gives a two-top model
    of one member: both tops over its one trunk.
    """
    if not 0.0 <= weight <= 1.0:
        raise CheckpointError(f"two tops: class_weight {weight} must be in [0, 1]")
    if not isinstance(clean, SoundCLR | SoundCLREnsemble) or not isinstance(adapted, SoundCLR | SoundCLREnsemble):
        raise CheckpointError("two tops need the clean model and the one adapt made from it, not a two-top model")
    if adapted.open_set is None or adapted_card.classes != [*clean_card.classes, BACKGROUND_LABEL]:
        raise CheckpointError("the adapted model must be adapt's output for the clean model (its classes + background)")
    cleans, adapteds = _members(clean), _members(adapted)
    if len(cleans) != len(adapteds):
        raise CheckpointError(f"{len(cleans)} clean networks but {len(adapteds)} adapted ones")
    last = len(cleans[0].backbone.net._blocks) - 1
    top_parts = tuple(p.format(last=last) for p in ROOM_TOP_PARTS)
    for i, (c, a) in enumerate(zip(cleans, adapteds)):
        theirs = a.state_dict()
        for key, value in c.state_dict().items():
            if key.startswith(top_parts) or key.startswith(("classifier.", "log_logit_scale", "projector.")):
                continue
            if not torch.equal(value, theirs[key]):
                raise CheckpointError(f"network {i}: {key} differs; the adapted model was not made from this clean one")
    model = TwoTopEnsemble(clean_card.arch, len(clean_card.classes), clean_card.frontend_config, len(cleans), weight)
    for target, c in zip(model.clean.members, cleans):
        target.load_state_dict({k: v for k, v in c.state_dict().items() if not k.startswith("projector.")})
    for room, a in zip(model.rooms, adapteds):
        net = a.backbone.net
        room.block.load_state_dict(net._blocks[-1].state_dict())
        room.conv_head.load_state_dict(net._conv_head.state_dict())
        room.bn1.load_state_dict(net._bn1.state_dict())
        room.classifier.load_state_dict(a.classifier.state_dict())
        room.log_logit_scale.data.copy_(a.log_logit_scale.data)
    model.open_set = copy.deepcopy(adapted.open_set)
    card = _serving_card(adapted_card, list(adapted_card.classes))
    card.extra["two_tops"] = {
        "class_weight": weight,
        "combine": "p(background) from the room tops after the open-set gate; 1 - p(background) shared among "
        "the events by softmax(w * log p_clean + (1 - w) * log p_room_events), w = class_weight",
        "clean": "the clean model's tops: " + str(clean_card.extra.get("shipped", {}).get("status", "")),
    }
    return model.eval(), card
