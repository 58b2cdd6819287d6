"""One fold of SoundCLR training: batches, augmentation, loss, schedule, evaluation, checkpoints.

``train_fold`` trains on the training folds minus a stratified validation split, logs
one JSON line per epoch, keeps ``state.pt`` (weights, optimiser, generators, best so far)
after every epoch so ``resume=True`` continues exactly where a run stopped, and writes the
chosen checkpoint as ``best.safetensors`` with its model card. The checkpoint is chosen
on the validation split (protocol ``cv``) or, labelled as optimistic, on the test fold
(protocol ``paper``); the test fold's accuracy is logged every epoch and chooses nothing
under ``cv``.

Learning rate: linear warm-up over the first ``warmup_epochs`` (per step), then either
``lr * lr_decay ** (epoch - warmup_epochs)`` a epoch (``schedule="exp"``, the paper's) or
a per-step half cosine from ``lr`` down to 0 at the last epoch (``schedule="cosine"``); a
pure function of the position, so resuming needs no scheduler object. ``ema`` > 0 keeps
an exponential moving average of the weights (and BatchNorm statistics), which is what
gets evaluated and saved. ``mixup`` > 0 mixes each batch's waveforms with a shuffled copy
(``lam ~ Beta(mixup, mixup)`` folded to ``>= 0.5``). With ``val_fraction`` 0 under ``cv``
there is no validation split: the checkpoint is the final epoch's, fixed in advance.
``backgrounds`` (a background corpus, scripts/build-background-corpus.sh) mixes ``mix_share`` of the
training clips, before the waveform augmentation, over windows of the corpus's train split at an
event-to-background ratio drawn from [``mix_ebr_min``, ``mix_ebr_max``] dB (``soundwatch adapt``'s mixer:
the clip's active part at a random position, at least 1 s of it in the window); the clips keep their
labels, so the network learns the 50 classes over speech, music and rooms from the start.
``supcon`` trains in two stages: contrastive pre-training for ``epochs``, then
``linear_epochs`` of a linear classifier on the frozen encoder. Under ``torchrun``
(WORLD_SIZE > 1) each process takes its share of every batch and DistributedDataParallel
averages the gradients; rank 0 evaluates and writes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from soundwatch.config import TrainSettings as _T
from soundwatch.data.datasets import ClipSet, stratified_split
from soundwatch.dsp.augment import augment_wave, mask_spec
from soundwatch.dsp.frontend import FrontendConfig
from soundwatch.models.checkpoint import ModelCard, save_checkpoint, save_state_atomic
from soundwatch.models.soundclr import SoundCLR
from soundwatch.train.losses import training_loss

LICENCE_NOTE = "weights trained on ESC-50, CC BY-NC 3.0: non-commercial use only"
EVAL_BATCH = 64


@dataclass
class RunOptions:
    """Everything one fold's training depends on: the resolved [train] settings (their defaults are
    TrainSettings', the one place they are declared) plus the run's own flags."""

    arch: str = _T.arch
    pretrained: bool = _T.pretrained
    weights: str | None = None
    loss: str = _T.loss
    alpha: float = _T.alpha
    temperature: float = _T.temperature
    lr: float = _T.lr
    weight_decay: float = _T.weight_decay
    warmup_epochs: int = _T.warmup_epochs
    lr_decay: float = _T.lr_decay
    epochs: int = _T.epochs
    linear_epochs: int = _T.linear_epochs
    batch_size: int = _T.batch_size
    clips_per_class: int = _T.clips_per_class
    head_lr_scale: float = _T.head_lr_scale
    logit_scale: float = _T.logit_scale
    seed: int = _T.seed
    protocol: str = _T.protocol
    val_fraction: float = _T.val_fraction
    val_split: str = _T.val_split
    schedule: str = _T.schedule
    ema: float = _T.ema
    mixup: float = _T.mixup
    backgrounds: str = _T.backgrounds
    background_manifest: str = _T.background_manifest
    mix_share: float = _T.mix_share
    mix_ebr_min: float = _T.mix_ebr_min
    mix_ebr_max: float = _T.mix_ebr_max
    mix_streams: int = _T.mix_streams
    device: str = "cpu"
    data_dir: str = ""


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    val_acc: float | None
    test_acc: float
    epochs_done: int
    wall_s: float
    checkpoint: str
    commit: str = "unknown"  # the code the run started on
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)


def hardware() -> str:
    """A one-line description of the machine, for model cards and reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"
    )


def git_commit() -> str:
    """This checkout's short commit; $SOUNDWATCH_COMMIT where the code runs without its .git (scripts/gpu-job.sh
    on a lent machine, where only the working tree travels); "unknown" when neither says."""
    if os.environ.get("SOUNDWATCH_COMMIT"):
        return os.environ["SOUNDWATCH_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lr_at(opts: RunOptions, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate at ``step`` of ``epoch`` (0-based): per-step linear warm-up, then x lr_decay a epoch."""
    if epoch >= opts.epochs:  # supcon's linear stage: its own short warm-up-free schedule
        return opts.lr * opts.lr_decay ** (epoch - opts.epochs)
    if epoch < opts.warmup_epochs:
        return opts.lr * (epoch * steps_per_epoch + step + 1) / (opts.warmup_epochs * steps_per_epoch)
    if opts.schedule == "cosine":
        done = (epoch - opts.warmup_epochs) * steps_per_epoch + step + 1
        total = max(opts.epochs - opts.warmup_epochs, 1) * steps_per_epoch
        return opts.lr * 0.5 * (1.0 + math.cos(math.pi * min(done / total, 1.0)))
    return opts.lr * opts.lr_decay ** (epoch - opts.warmup_epochs)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, steps_done: int) -> None:
    """``average <- d * average + (1 - d) * model`` for weights and float buffers (others copied).

    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` steps, so the early average is not
    dominated by the ImageNet starting point.
    """
    d = min(decay, (1 + steps_done) / (10 + steps_done))
    for a, p in zip(average.parameters(), model.parameters()):
        a.lerp_(p, 1.0 - d)
    for a, b in zip(average.buffers(), model.buffers()):
        if a.is_floating_point():
            a.lerp_(b, 1.0 - d)
        else:
            a.copy_(b)


def epoch_batches(
    labels: np.ndarray, batch_size: int, clips_per_class: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Positions into ``labels`` for one epoch, in batches.

    ``clips_per_class`` 0: a plain shuffle. Otherwise each batch is made of groups of
    ``clips_per_class`` clips of one class (so every anchor of the contrastive loss has
    positives); every clip is still seen once per epoch.
    """
    n = len(labels)
    if clips_per_class <= 0:
        order = torch.randperm(n, generator=generator).numpy()
    else:
        groups = []
        for label in np.unique(labels):
            pos = np.flatnonzero(labels == label)
            pos = pos[torch.randperm(len(pos), generator=generator).numpy()]
            groups += [pos[i : i + clips_per_class] for i in range(0, len(pos), clips_per_class)]
        perm = torch.randperm(len(groups), generator=generator).numpy()
        order = np.concatenate([groups[i] for i in perm])
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= 2]  # a batch of one breaks BatchNorm and SupCon


class _Encoder(nn.Module):
    """What DDP wraps during end-to-end training: spectrogram -> (logits, embedding, projection)."""

    def __init__(self, model: SoundCLR):
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor):
        return self.model.forward_spec(spec)


class _LinearHead(nn.Module):
    """supcon's second stage: the frozen encoder's embedding -> classifier logits."""

    def __init__(self, model: SoundCLR):
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor):
        with torch.no_grad():
            emb = self.model.embed(spec)
        return self.model.classify(emb), emb, emb


@torch.no_grad()
def evaluate(model: SoundCLR, waves: np.ndarray, labels: np.ndarray, device: str) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean cross-entropy, predictions) on clean, full-length clips."""
    model.eval()
    preds, losses = [], []
    for i in range(0, len(labels), EVAL_BATCH):
        x = torch.from_numpy(np.asarray(waves[i : i + EVAL_BATCH], dtype=np.float32)).to(device)
        y = torch.from_numpy(labels[i : i + EVAL_BATCH]).to(device)
        logits, _ = model(x)
        losses.append(nn.functional.cross_entropy(logits, y, reduction="sum").item())
        preds.append(logits.argmax(1).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return float((pred == labels).mean()) if len(labels) else float("nan"), sum(losses) / max(len(labels), 1), pred


def _make_optimizer(model: SoundCLR, opts: RunOptions, linear: bool) -> torch.optim.Optimizer:
    """AdamW: the backbone at ``lr``, the fresh heads at ``lr * head_lr_scale`` (one group when that is 1)."""
    heads = [*model.classifier.parameters(), model.log_logit_scale]
    if linear:
        groups = [{"params": heads, "lr_scale": opts.head_lr_scale}]
    elif opts.head_lr_scale == 1.0:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    else:
        heads += list(model.projector.parameters())
        head_ids = {id(p) for p in heads}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body, "lr_scale": 1.0}, {"params": heads, "lr_scale": opts.head_lr_scale}]
    return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)


def _set_linear_stage(model: SoundCLR) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*model.classifier.parameters(), model.log_logit_scale]:
        p.requires_grad_(True)


def _seed_epoch(seed: int, epoch: int, rank: int, sampler_gen: torch.Generator, augment_gen: torch.Generator) -> None:
    """Every random stream restarts from (seed, epoch, rank) each epoch: a resumed run repeats an uninterrupted one."""
    base = (seed * 100_003 + epoch) * 64
    sampler_gen.manual_seed(base)  # the same on every process: they split the same batches
    augment_gen.manual_seed(base + 1 + rank)
    torch.manual_seed(base + 33 + rank)  # dropout, drop-connect
    np.random.seed(base + 33 + rank)
    random.seed(base + 33 + rank)


def _wrap(module: nn.Module, dist: Distributed, find_unused: bool) -> nn.Module:
    if dist.world == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused)


def _barrier(dist: Distributed) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


@dataclass
class _Split:
    """Positions into the clip set: what trains, what chooses the epoch, what is held out."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    held: dict = field(default_factory=dict)  # "val"/"test" -> (waves, labels), read once


def split_fold(clips: ClipSet, test_fold: int, opts: RunOptions) -> _Split:
    """Hold out ``test_fold``; under ``cv`` draw the stratified validation split from the rest."""
    train_all = clips.indices([k for k in range(1, clips.n_folds + 1) if k != test_fold])
    test = clips.indices([test_fold])
    if opts.protocol == "paper":
        split = _Split(train_all, np.zeros(0, np.int64), test)
    else:
        groups = [clips.sources[i] for i in train_all] if opts.val_split == "source" and clips.sources else None
        tr, va = stratified_split(clips.labels[train_all], opts.val_fraction, opts.seed, groups)
        split = _Split(train_all[tr], train_all[va], test)
    for name, idx in (("val", split.val), ("test", split.test)):
        split.held[name] = (np.asarray(clips.waves[idx]), clips.labels[idx])
    return split


def build_model(clips: ClipSet, opts: RunOptions) -> SoundCLR:
    """A fresh SoundCLR for the clip set, its heads initialised from ``opts.seed``, on ``opts.device``."""
    torch.manual_seed(opts.seed)  # the heads' initialisation
    model = SoundCLR(
        opts.arch,
        len(clips.classes),
        FrontendConfig(sample_rate=clips.sample_rate),
        opts.pretrained,
        Path(opts.weights) if opts.weights else None,
        logit_scale=opts.logit_scale,
    )
    if opts.arch != "tiny":
        model = model.to(memory_format=torch.channels_last)
    return model.to(opts.device)


@dataclass
class _FoldState:
    """What one fold's training carries from epoch to epoch, and what ``state.pt`` saves."""

    model: SoundCLR
    average: SoundCLR | None  # the moving average of the weights (``ema`` > 0)
    optimizer: torch.optim.Optimizer
    commit: str
    linear: bool = False  # supcon's second stage
    start_epoch: int = 0
    wall_before: float = 0.0  # training seconds spent before this process (a resumed run)
    best: dict = field(
        default_factory=lambda: {"epoch": -1, "score": (-1.0, float("-inf")), "val_acc": None, "test_acc": None}
    )

    @property
    def scored(self) -> SoundCLR:
        """What is evaluated and saved: the average when there is one."""
        return self.average if self.average is not None else self.model

    def enter_linear_stage(self, opts: RunOptions) -> None:
        self.linear = True
        _set_linear_stage(self.model)
        self.optimizer = _make_optimizer(self.model, opts, linear=True)

    def save(self, path: Path, epoch: int, wall: float, opts: RunOptions) -> None:
        """Everything a resumed run needs, written atomically."""
        state = {
            "epoch": epoch,
            "wall_s": wall,
            "best": self.best,
            "linear": self.linear,
            "commit": self.commit,
            "model": self.model.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "options": asdict(opts),
        }
        save_state_atomic(state, path)


def _start_fold(
    model: SoundCLR, opts: RunOptions, out_dir: Path, resume: bool, dist: Distributed, commit: str
) -> _FoldState:
    """A fresh start, or the state a stopped run saved in ``out_dir`` (``resume``), with the metrics
    log cut back to the epochs that state holds."""
    average = copy.deepcopy(model).requires_grad_(False) if opts.ema > 0 else None
    fold = _FoldState(model, average, _make_optimizer(model, opts, linear=False), commit)
    state_file, metrics_file = out_dir / "state.pt", out_dir / "metrics.jsonl"
    if not (resume and state_file.is_file()):
        if dist.main and metrics_file.exists():
            metrics_file.unlink()
        return fold
    state = torch.load(state_file, map_location=opts.device, weights_only=False)
    model.load_state_dict(state["model"])
    if average is not None:
        average.load_state_dict(state["average"])
    fold.start_epoch, fold.wall_before = state["epoch"] + 1, state["wall_s"]
    fold.best = {**state["best"], "score": tuple(state["best"]["score"])}
    fold.commit = state.get("commit", commit)
    if state["linear"]:
        fold.enter_linear_stage(opts)
    fold.optimizer.load_state_dict(state["optimizer"])
    for group, saved in zip(fold.optimizer.param_groups, state["optimizer"]["param_groups"]):
        group["lr_scale"] = saved.get("lr_scale", 1.0)
    if metrics_file.is_file() and dist.main:  # drop epochs logged after the state was saved
        kept = [ln for ln in metrics_file.read_text().splitlines() if json.loads(ln)["epoch"] <= state["epoch"]]
        metrics_file.write_text("".join(ln + "\n" for ln in kept))
    return fold


def manifest_of(opts: RunOptions | _T) -> Path:
    """The background corpus's manifest: ``background_manifest``, else ``<corpus>-manifest.csv`` beside the corpus
    folder (data/background -> data/background-manifest.csv, where scripts/build-background-corpus.sh writes it).
    Run options or the [train] settings they are resolved from: the same two fields."""
    if opts.background_manifest:
        return Path(opts.background_manifest)
    corpus = Path(opts.backgrounds)
    return corpus.parent / f"{corpus.name}-manifest.csv"


def background_mixer(opts: RunOptions, window: int):
    """``opts.backgrounds``' mixer (None when off): adapt's WindowMaker over the corpus's **train** split, its
    background streams drawn once from the seed; ``mix_backgrounds`` reseeds its draws every epoch."""
    if not opts.backgrounds:
        return None
    from soundwatch.train.adapt import AdaptOptions, WindowMaker

    mix = AdaptOptions(ebr_db=(opts.mix_ebr_min, opts.mix_ebr_max), streams_per_type=opts.mix_streams, seed=opts.seed)
    rng = np.random.default_rng([opts.seed, 7])
    return WindowMaker(Path(opts.backgrounds), manifest_of(opts), "train", window, mix, rng)


def mix_backgrounds(waves: np.ndarray, mixer, share: float) -> tuple[np.ndarray, int]:
    """``waves`` with each clip, at probability ``share``, replaced by its active part over a train-split
    background window at a random event-to-background ratio (the mixer's draws); (waves, clips mixed).
    The labels stay the clips'."""
    out = np.array(waves, dtype=np.float32, copy=True)
    mixed = 0
    for i in np.flatnonzero(mixer.rng.random(len(out)) < share):
        window, ebr = mixer.mixed(out[i].astype(np.float64))
        if np.isfinite(ebr):  # a clip with no active part stays as it is
            out[i], mixed = window, mixed + 1
    return out, mixed


@torch.no_grad()
def _augmented_spec(
    model: SoundCLR, x: torch.Tensor, y: torch.Tensor, opts: RunOptions, gen: torch.Generator, mix: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, float] | None]:
    """A batch's training spectrograms: waveform augmentation, mixup (``mix`` and ``opts.mixup`` > 0;
    returns the partner labels and weight), spectrogram masking."""
    mixed = None
    x = augment_wave(x, gen)
    if mix and opts.mixup > 0 and len(x) > 1:
        lam = float(np.random.beta(opts.mixup, opts.mixup))
        lam = max(lam, 1.0 - lam)
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        x = lam * x + (1.0 - lam) * x[perm]
        mixed = (y[perm], lam)
    return mask_spec(model.frontend(x), gen), mixed


def _train_epoch(
    fold: _FoldState,
    step_module: nn.Module,
    waves,
    train_idx: np.ndarray,
    labels: np.ndarray,
    epoch: int,
    opts: RunOptions,
    dist: Distributed,
    augment_gen: torch.Generator,
    batches: list[np.ndarray],
    on_step: Callable[[int, int], None] | None,
    mixer=None,
) -> dict:
    """One pass over ``batches`` (positions into ``train_idx``); returns the epoch's training record."""
    model, optimizer, device = fold.model, fold.optimizer, opts.device
    loss_kind = "ce" if fold.linear else opts.loss
    model.train()
    if fold.linear:
        model.backbone.eval()
    t_epoch, data_s = time.monotonic(), 0.0
    sums: dict[str, float] = {}
    correct = seen = mixed_clips = 0
    if mixer is not None:  # every epoch's mixtures from (seed, epoch, rank): a resumed run draws the same
        mixer.rng = np.random.default_rng([opts.seed, epoch, dist.rank, 11])
    for step, batch in enumerate(batches):
        t0 = time.monotonic()
        mine = batch[dist.rank :: dist.world]
        x = np.asarray(waves[train_idx[mine]], dtype=np.float32)
        if mixer is not None and not fold.linear:
            x, n = mix_backgrounds(x, mixer, opts.mix_share)
            mixed_clips += n
        x = torch.from_numpy(x)
        y = torch.from_numpy(labels[mine])
        data_s += time.monotonic() - t0
        x, y = x.to(device), y.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(opts, epoch, step, len(batches)) * group["lr_scale"]
        spec, mixed = _augmented_spec(model, x, y, opts, augment_gen, mix=not fold.linear)
        logits, _, proj = step_module(spec)
        loss, parts = training_loss(loss_kind, logits, proj, y, opts.alpha, opts.temperature, mixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if fold.average is not None:
            ema_update(fold.average, model, opts.ema, epoch * len(batches) + step)
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v * len(mine)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(mine)
        if on_step and dist.main:
            on_step(step + 1, len(batches))
    train_s = time.monotonic() - t_epoch
    return {
        "epoch": epoch,
        "stage": "linear" if fold.linear else opts.loss,
        "lr": lr_at(opts, epoch, len(batches) - 1, len(batches)),
        **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
        "train_acc": correct / max(seen, 1),
        **({"train_mixed": mixed_clips} if mixer is not None else {}),
        "logit_scale": float(model.log_logit_scale.detach().exp()),
        "train_s": round(train_s, 2),
        "data_wait_share": round(data_s / max(train_s, 1e-9), 4),
    }


def _epoch_score(record: dict, opts: RunOptions) -> tuple[float, float]:
    """What chooses the checkpoint (higher is better): the test fold under ``paper`` (optimistic, and
    labelled so), else the validation split, else (no split) the latest epoch, fixed before training."""
    if opts.protocol == "paper":
        return (record["test_acc"], -record["test_loss"])
    if "val_acc" in record:
        return (record["val_acc"], -record["val_loss"])
    return (float(record["epoch"]), 0.0)


def train_fold(
    clips: ClipSet,
    test_fold: int,
    opts: RunOptions,
    out_dir: Path,
    resume: bool = False,
    dist: Distributed = Distributed(),
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    commit: str | None = None,
) -> FoldResult:
    """Train with ``test_fold`` held out; return the chosen checkpoint's results.

    ``commit``: the code the whole run started on (default: HEAD now); a resumed fold keeps
    the one in its saved state.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_fold(clips, test_fold, opts)
    fold = _start_fold(build_model(clips, opts), opts, out_dir, resume, dist, commit or git_commit())
    _barrier(dist)
    total_epochs = opts.epochs + (opts.linear_epochs if opts.loss == "supcon" else 0)
    sampler_gen, augment_gen = torch.Generator(), torch.Generator()
    step_module = _wrap(_LinearHead(fold.model) if fold.linear else _Encoder(fold.model), dist, opts.loss == "supcon")
    labels = clips.labels[split.train]
    mixer = background_mixer(opts, clips.waves.shape[1])
    started = time.monotonic()
    for epoch in range(fold.start_epoch, total_epochs):
        if opts.loss == "supcon" and epoch >= opts.epochs and not fold.linear:
            fold.enter_linear_stage(opts)
            step_module = _wrap(_LinearHead(fold.model), dist, False)
        _seed_epoch(opts.seed, epoch, dist.rank, sampler_gen, augment_gen)
        t_epoch = time.monotonic()
        batches = epoch_batches(labels, opts.batch_size, opts.clips_per_class, sampler_gen)
        record = _train_epoch(
            fold, step_module, clips.waves, split.train, labels, epoch, opts, dist, augment_gen, batches, on_step, mixer
        )
        if dist.main:
            _end_epoch(fold, record, clips, split, test_fold, opts, out_dir, t_epoch, started)
            if on_epoch:
                on_epoch(record)
        _barrier(dist)
    result = _finish_fold(fold, clips, split, test_fold, opts, out_dir, total_epochs, started) if dist.main else None
    _barrier(dist)
    return result


def _end_epoch(
    fold: _FoldState,
    record: dict,
    clips: ClipSet,
    split: _Split,
    test_fold: int,
    opts: RunOptions,
    out_dir: Path,
    t_epoch: float,
    started: float,
) -> None:
    """Evaluate, keep the checkpoint if this epoch is the best so far, log, save the state (rank 0)."""
    if len(split.val):
        record["val_acc"], record["val_loss"], _ = evaluate(fold.scored, *split.held["val"], opts.device)
    record["test_acc"], record["test_loss"], _ = evaluate(fold.scored, *split.held["test"], opts.device)
    wall = fold.wall_before + time.monotonic() - started
    record.update(epoch_s=round(time.monotonic() - t_epoch, 2), wall_s=round(wall, 1))
    choosing = opts.loss != "supcon" or fold.linear  # supcon's contrastive stage has no classifier yet
    score = _epoch_score(record, opts)
    if choosing and score > tuple(fold.best["score"]):
        fold.best = {
            "epoch": record["epoch"],
            "score": score,
            "val_acc": record.get("val_acc"),
            "test_acc": record["test_acc"],
        }
        card = _card(clips, opts, test_fold, split, fold.best, record["epoch"] + 1, wall, fold.commit)
        save_checkpoint(out_dir / "best.safetensors", fold.scored, card)
    record["best_epoch"] = fold.best["epoch"]
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    fold.save(out_dir / "state.pt", record["epoch"], wall, opts)


def _finish_fold(
    fold: _FoldState,
    clips: ClipSet,
    split: _Split,
    test_fold: int,
    opts: RunOptions,
    out_dir: Path,
    total_epochs: int,
    started: float,
) -> FoldResult:
    """Score the chosen checkpoint on the test fold and write its final card (rank 0)."""
    from soundwatch.models.checkpoint import load_checkpoint

    best_file = out_dir / "best.safetensors"
    chosen, _ = load_checkpoint(best_file)
    test_waves, test_labels = split.held["test"]
    test_acc, _, pred = evaluate(chosen.to(opts.device), test_waves, test_labels, opts.device)
    wall = fold.wall_before + time.monotonic() - started
    card = _card(clips, opts, test_fold, split, fold.best, total_epochs, wall, fold.commit, final_test=test_acc)
    save_checkpoint(best_file, chosen, card)
    return FoldResult(
        test_fold,
        fold.best["epoch"],
        fold.best["val_acc"],
        test_acc,
        total_epochs,
        wall,
        str(best_file),
        fold.commit,
        pred.tolist(),
        test_labels.tolist(),
    )


def _card(
    clips: ClipSet,
    opts: RunOptions,
    test_fold: int,
    split: _Split,
    best: dict,
    epochs_done: int,
    wall: float,
    commit: str,
    final_test: float | None = None,
) -> ModelCard:
    chosen_by = (
        "test fold (paper protocol: optimistic)"
        if opts.protocol == "paper"
        else "the final epoch, fixed before training (no validation split)"
        if not len(split.val)
        else f"validation split ({len(split.val)} clips, {opts.val_fraction:.1%} of the training folds, "
        f"stratified, {'whole source recordings' if opts.val_split == 'source' else 'clip by clip'}, "
        f"seed {opts.seed})"
    )
    extra = {
        "data": {
            "dataset": clips.name,
            "data_dir": opts.data_dir,
            "sample_rate": clips.sample_rate,
            "clips": int(len(clips.labels)),
            "skipped": len(clips.skipped),
        },
        "folds": {
            "train": [k for k in range(1, clips.n_folds + 1) if k != test_fold],
            "test": test_fold,
            "train_clips": int(len(split.train)),
            "val_clips": int(len(split.val)),
        },
        "training": {
            "loss": opts.loss,
            "alpha": opts.alpha,
            "temperature": opts.temperature,
            "lr": opts.lr,
            "weight_decay": opts.weight_decay,
            "warmup_epochs": opts.warmup_epochs,
            "lr_decay": opts.lr_decay,
            "schedule": opts.schedule,
            "ema": opts.ema,
            "mixup": opts.mixup,
            "batch_size": opts.batch_size,
            "clips_per_class": opts.clips_per_class,
            "pretrained": opts.pretrained,
            **(
                {
                    "backgrounds": {
                        "corpus": opts.backgrounds,
                        "manifest": str(manifest_of(opts)),
                        "split": "train",
                        "mix_share": opts.mix_share,
                        "ebr_db": [opts.mix_ebr_min, opts.mix_ebr_max],
                        "streams_per_type": opts.mix_streams,
                    }
                }
                if opts.backgrounds
                else {}
            ),
            "seed": opts.seed,
            "protocol": opts.protocol,
            "epochs_planned": opts.epochs + (opts.linear_epochs if opts.loss == "supcon" else 0),
            "epochs_done": epochs_done,
            "commit": commit,
        },
        "epochs": epochs_done,
        "metrics": {
            "chosen_by": chosen_by,
            "best_epoch": best["epoch"],
            "val_acc": best["val_acc"],
            "test_acc": final_test if final_test is not None else best["test_acc"],
        },
        "training_wall_s": round(wall, 1),
        "hardware": hardware(),
        "license": LICENCE_NOTE
        if clips.name in ("esc50", "esc10")
        else "weights trained on UrbanSound8K, CC BY-NC 3.0: non-commercial use only",
    }
    return ModelCard(
        arch=opts.arch,
        classes=list(clips.classes),
        sample_rate=clips.sample_rate,
        window_s=clips.clip_s,
        frontend=FrontendConfig(sample_rate=clips.sample_rate).to_dict(),
        extra=extra,
    )
