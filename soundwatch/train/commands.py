"""``soundwatch train`` and ``soundwatch eval``.

``train DATASET`` runs every requested test fold in turn (``--protocol cv``) or fold 1
(``--protocol paper``) into ``--out``: ``config.json`` (the resolved settings),
``fold<k>/`` (metrics.jsonl, state.pt, best.safetensors + .json card, confusion.png,
per_class.json) and ``report.md`` with the fold table. Under ``torchrun`` it trains with
DistributedDataParallel (gloo on the CPU, nccl on GPUs), each process taking its share
of every batch (the contrastive loss sees the process's share)::

    torchrun --standalone --nproc_per_node 4 -m soundwatch train esc50 --device cuda --data-dir DIR

``eval CHECKPOINT`` scores a checkpoint on one fold through an inference engine
(``soundwatch.engines.create_engine``), clips centre-padded or cropped to the model's
window, and prints JSON.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer

from soundwatch.data.datasets import load_clips, parse_folds, progress_bar
from soundwatch.dsp.clips import center_fit
from soundwatch.errors import UserError, check_new_file, check_output_dir, check_output_file

if TYPE_CHECKING:
    from soundwatch.train.loop import RunOptions  # imports torch: the commands import it when they run

IN_MEMORY_BYTES = 4 << 30  # decoded datasets up to this size are read into memory for training
FOLDS_HELP = "test folds, e.g. 1 or 1,3 or 1-5 (default: all; fold 1 under --protocol paper)"


def native_rate(data_dir: Path) -> int:
    """The sample rate of the first audio file under ``data_dir/audio``."""
    import soundfile as sf

    from soundwatch.data.datasets import AUDIO_EXTENSIONS

    audio = Path(data_dir) / "audio"
    if not audio.is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no audio/ folder in it; give the dataset's root in its official layout "
            "(audio/ beside meta/ or metadata/)"
        )
    for path in sorted(audio.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            try:
                return int(sf.info(str(path)).samplerate)
            except RuntimeError:
                continue
    raise UserError(f"{data_dir}/audio holds no readable audio file; pass --sample-rate")


def _distributed():
    from soundwatch.train.loop import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch
    import torch.distributed as tdist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    tdist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(tdist.get_rank(), tdist.get_world_size())


def _barrier_all() -> None:
    import torch.distributed as tdist

    tdist.barrier()


def train(
    dataset: str = typer.Argument(..., help="esc50 | esc10 | us8k"),
    data_dir: Optional[Path] = typer.Option(
        None,
        "--data-dir",
        help="local copy in the official layout (esc50/esc10 without it: download and cache the official archive)",
    ),
    folds: Optional[str] = typer.Option(None, "--folds", help=FOLDS_HELP),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="cv | paper"),
    arch: Optional[str] = typer.Option(None, "--arch", help="efficientnet_lite0 | resnet50 | tiny"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="backbone weights file (e.g. torchvision resnet50)"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="start from ImageNet weights"),
    loss: Optional[str] = typer.Option(None, "--loss", help="ce | supcon | hybrid"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default: config lr; lr_us8k for us8k)"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="hybrid: alpha * SupCon + (1 - alpha) * CE"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs"),
    lr_decay: Optional[float] = typer.Option(None, "--lr-decay"),
    linear_epochs: Optional[int] = typer.Option(
        None, "--linear-epochs", help="supcon: epochs of the linear classifier stage"
    ),
    clips_per_class: Optional[int] = typer.Option(
        None, "--clips-per-class", help="batches of groups of N clips per class (0: plain shuffle)"
    ),
    head_lr_scale: Optional[float] = typer.Option(
        None, "--head-lr-scale", help="heads' learning rate relative to --lr"
    ),
    logit_scale: Optional[float] = typer.Option(
        None, "--logit-scale", help="initial (learnable) classifier logit scale"
    ),
    val_fraction: Optional[float] = typer.Option(
        None,
        "--val-fraction",
        help="share of the training folds held in to choose the epoch (0: none; the final epoch is kept)",
    ),
    schedule: Optional[str] = typer.Option(
        None,
        "--schedule",
        help="exp: x lr-decay a epoch after warm-up (the paper's); "
        "cosine: half cosine to 0 at the last epoch (--resume with another --epochs "
        "redraws the rest of the curve)",
    ),
    ema: Optional[float] = typer.Option(
        None, "--ema", help="decay of a moving average of the weights, evaluated and saved (e.g. 0.998; 0: off)"
    ),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="waveform mixup, lam ~ Beta(a, a) (e.g. 0.2; 0: off)"),
    backgrounds: Optional[str] = typer.Option(
        None,
        "--backgrounds",
        help="background corpus (scripts/build-background-corpus.sh, e.g. data/background): mix training clips over "
        'its train split (16 kHz data only; "" = off)',
    ),
    background_manifest: Optional[str] = typer.Option(
        None, "--background-manifest", help="its manifest (default: <corpus>-manifest.csv beside it)"
    ),
    mix_share: Optional[float] = typer.Option(
        None, "--mix-share", help="with --backgrounds: share of the training clips mixed (default 0.5)"
    ),
    mix_ebr_min: Optional[float] = typer.Option(
        None, "--mix-ebr-min", help="lowest event-to-background ratio of a mixture, dB (default -9)"
    ),
    mix_ebr_max: Optional[float] = typer.Option(
        None, "--mix-ebr-max", help="highest event-to-background ratio of a mixture, dB (default 15)"
    ),
    mix_streams: Optional[int] = typer.Option(
        None,
        "--mix-streams",
        help="with --backgrounds: 2-minute background streams made per type from the train split (default 12)",
    ),
    val_split: Optional[str] = typer.Option(
        None,
        "--val-split",
        help="source: hold out whole source recordings; random: clip by clip (leaks recordings across the split)",
    ),
    seed: Optional[int] = typer.Option(None, "--seed"),
    sample_rate: int = typer.Option(0, "--sample-rate", help="model rate in Hz (0: the data's own rate)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<dataset>-<timestamp>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out where it stopped"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="config.toml (default: $SOUNDWATCH_CONFIG or ./config.toml)"
    ),
) -> None:
    """Train SoundCLR on ESC-50, ESC-10 or UrbanSound8K and report per-fold accuracy."""
    from soundwatch.config import TrainSettings

    given = locals()
    flags = {f.name: given[f.name] for f in fields(TrainSettings) if f.name in given}  # the [train] flags
    request = parse_train(dataset, data_dir, folds, weights, sample_rate, device, threads, out, resume, config, flags)
    run_training(request)


@dataclass
class TrainRequest:
    """A ``train`` command, resolved: config file, then flags, then the data's own facts."""

    dataset: str
    data_dir: Path
    rate: int
    folds: list[int]
    opts: RunOptions
    out_dir: Path
    resume: bool


def parse_train(
    dataset: str,
    data_dir: Optional[Path],
    folds: Optional[str],
    weights: Optional[Path],
    sample_rate: int,
    device: str,
    threads: int,
    out: Optional[Path],
    resume: bool,
    config: Optional[Path],
    flags: dict,
) -> TrainRequest:
    """Check the command line and resolve it against config.toml's [train] (flags win); UserError on bad input.
    What a user can get wrong is checked before torch is imported (4 s on a slow machine), the --out folder
    before ESC-50 is downloaded."""
    from soundwatch.config import default_config_path, load_settings, override
    from soundwatch.data.datasets import SPECS
    from soundwatch.data.scenes import SAMPLE_RATE

    if dataset not in SPECS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(SPECS)}")
    ts = override(load_settings(config or default_config_path()), "train", **flags).train
    if data_dir is None and dataset == "us8k":
        raise UserError("UrbanSound8K cannot be downloaded automatically; download it and pass --data-dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such directory (the dataset in its official layout)")
    test_folds = parse_folds(folds, SPECS[dataset].n_folds, ts.protocol)
    if ts.protocol == "paper" and test_folds != [1]:
        raise UserError("--protocol paper trains and tests fold 1 only (the paper's own code); use --protocol cv")
    out_dir = Path(out) if out else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_dir("--out", out_dir)
    if resume and not (out_dir / "config.json").is_file():
        raise UserError(f"--resume: {out_dir} holds no run to continue (no config.json)")
    run_files = (out_dir / "config.json", *out_dir.glob("fold*/*.safetensors"), *out_dir.glob("fold*/state.pt"))
    held = [p for p in run_files if p.is_file()]  # what a run left there: the message names only what exists
    if not resume and held:
        raise UserError(
            f"--out {out_dir}: holds a run already ({', '.join(str(p.relative_to(out_dir)) for p in held[:3])}); "
            "a new run never replaces one: add --resume to continue it, or choose another --out"
        )
    rate = sample_rate or (native_rate(Path(data_dir)) if data_dir is not None else 0)
    if ts.backgrounds:
        _check_backgrounds(ts)

    import torch

    from soundwatch.train.loop import RunOptions

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine")
    if threads:
        torch.set_num_threads(threads)
    if data_dir is None:
        from soundwatch.train.download import ensure_esc50

        data_dir = ensure_esc50()
    data_dir = Path(data_dir)
    settings = {f.name: getattr(ts, f.name) for f in fields(RunOptions) if hasattr(ts, f.name)}
    if flags.get("lr") is None and dataset == "us8k":
        settings["lr"] = ts.lr_us8k
    opts = RunOptions(**settings, weights=str(weights) if weights else None, device=device, data_dir=str(data_dir))
    rate = rate or native_rate(data_dir)
    if ts.backgrounds and rate != SAMPLE_RATE:
        raise UserError(
            f"--backgrounds: the corpus is at {SAMPLE_RATE} Hz and the clips at {rate} Hz; "
            f"train at {SAMPLE_RATE} Hz (--sample-rate {SAMPLE_RATE}) or leave --backgrounds out"
        )
    return TrainRequest(dataset, data_dir, rate, test_folds, opts, out_dir, resume)


def _check_backgrounds(ts) -> None:
    """--backgrounds: a corpus whose train split holds every background type, a sensible ratio range; else UserError
    (the clips' rate is checked once it is known)."""
    from soundwatch.data.scenes import Backgrounds
    from soundwatch.train.loop import manifest_of

    corpus, manifest = Path(ts.backgrounds), manifest_of(ts)
    if not corpus.is_dir():
        raise UserError(f"--backgrounds {corpus}: no such directory; build it with scripts/build-background-corpus.sh")
    if not manifest.is_file():
        raise UserError(f"--backgrounds {corpus}: no manifest {manifest}; give it with --background-manifest")
    if ts.mix_ebr_min > ts.mix_ebr_max:
        raise UserError(f"--mix-ebr-min {ts.mix_ebr_min} is above --mix-ebr-max {ts.mix_ebr_max}")
    Backgrounds(corpus, manifest, "train")  # the train split holds every background type (UserError if not)


def _resumed_commit(req: TrainRequest, commit: str) -> str:
    """The commit the run in ``req.out_dir`` started on; UserError when its settings differ from these
    (``epochs`` may change: a resumed run can train longer or stop early)."""
    from soundwatch.train.loop import RunOptions

    saved = json.loads((req.out_dir / "config.json").read_text())
    before = saved["options"]
    if "val_split" not in before:  # runs from before --val-split drew the split clip by clip
        req.opts.val_split = before["val_split"] = "random"
    defaults = asdict(RunOptions())  # a run from before an option existed ran with its default
    changed = {
        k: (before.get(k, defaults[k]), v)
        for k, v in asdict(req.opts).items()
        if before.get(k, defaults[k]) != v and k != "epochs"
    }
    if changed:
        raise UserError(
            f"--resume: settings differ from the run in {req.out_dir}: "
            + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        )
    return saved.get("commit", commit)


def _write_run_config(req: TrainRequest, world: int, commit: str) -> None:
    import torch

    req.out_dir.mkdir(parents=True, exist_ok=True)
    resolved = {
        "dataset": req.dataset,
        "folds": req.folds,
        "sample_rate": req.rate,
        "threads": torch.get_num_threads(),
        "world_size": world,
        "commit": commit,
        "options": asdict(req.opts),
        "argv": sys.argv,
    }
    (req.out_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")


def _load_for_training(req: TrainRequest, dist):
    """The decoded clips, rank 0 first (it writes the decode cache the others read)."""
    if dist.world > 1 and not dist.main:
        _barrier_all()
    clips = load_clips(req.dataset, req.data_dir, req.rate)
    if dist.world > 1 and dist.main:
        _barrier_all()
    if clips.waves.nbytes < IN_MEMORY_BYTES:
        clips.waves = np.ascontiguousarray(clips.waves)  # batches are random reads; larger sets stay mapped
    return clips


def _train_fold_with_progress(req: TrainRequest, clips, fold: int, dist, commit: str):
    """One fold through ``train_fold``, with a progress bar and a line per epoch."""
    from soundwatch.train.loop import train_fold

    fold_dir = req.out_dir / f"fold{fold}"
    if dist.main:
        print(
            f"fold {fold}: training on folds {[k for k in range(1, clips.n_folds + 1) if k != fold]}, "
            f"{clips.sample_rate} Hz, {req.opts.arch}, loss {req.opts.loss}; log {fold_dir / 'metrics.jsonl'}",
            file=sys.stderr,
        )
    with progress_bar() as progress:
        task = progress.add_task(f"fold {fold}", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_epoch(r: dict) -> None:
            val = f" val {r['val_acc']:.3f}" if "val_acc" in r else ""
            progress.console.print(
                f"fold {fold} epoch {r['epoch']}: loss {r['train_loss']:.3f} train "
                f"{r['train_acc']:.3f}{val} test {r['test_acc']:.3f} ({r['epoch_s']:.0f} s)"
            )
            progress.update(task, description=f"fold {fold} epoch {r['epoch'] + 1}")

        return train_fold(
            clips,
            fold,
            req.opts,
            fold_dir,
            resume=req.resume,
            dist=dist,
            commit=commit,
            on_epoch=on_epoch,
            on_step=on_step,
        )


def _fold_outputs(req: TrainRequest, clips, result) -> dict:
    """Confusion matrix, per-class accuracy and result.json of a trained fold; its row of the report."""
    from soundwatch.train.report import write_fold_outputs

    fold_dir = req.out_dir / f"fold{result.fold}"
    title = f"{req.dataset} fold {result.fold} ({req.opts.arch}, {req.opts.loss}, test acc {result.test_acc:.1%})"
    per_class = write_fold_outputs(fold_dir, clips.classes, result.targets, result.predictions, title)
    row = {k: v for k, v in asdict(result).items() if k not in ("predictions", "targets")}
    row["per_class_accuracy"] = per_class
    (fold_dir / "result.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def run_training(req: TrainRequest) -> None:
    """Train every requested fold into ``req.out_dir`` and write the report (rank 0 writes)."""
    from soundwatch.train.loop import git_commit
    from soundwatch.train.report import fold_table, summary

    dist = _distributed()
    commit = git_commit()  # the code the run started on: one for every fold, kept across --resume
    if req.resume:
        commit = _resumed_commit(req, commit)
    if dist.main:
        _write_run_config(req, dist.world, commit)
    clips = _load_for_training(req, dist)
    rows = []
    for fold in req.folds:
        result = _train_fold_with_progress(req, clips, fold, dist, commit)
        if dist.main:
            rows.append(_fold_outputs(req, clips, result))
    if dist.main:
        _write_report(
            req.out_dir, req.dataset, clips, req.opts, rows, fold_table(rows, req.opts.protocol, req.opts.val_fraction)
        )
        print(json.dumps({"out": str(req.out_dir), **summary(rows)}))
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()


def _write_report(out_dir: Path, dataset: str, clips, opts, rows: list[dict], table: str) -> None:
    from soundwatch.train.loop import hardware

    skipped = "".join(f"- {s['file']}: {s['reason']}\n" for s in clips.skipped) or "none\n"
    text = (
        f"# SoundCLR on {dataset} ({clips.sample_rate} Hz)\n\n"
        f"Command: `{' '.join(sys.argv)}`  \nCommit the run started on: "
        f"{', '.join(sorted({r['commit'] for r in rows}))}  \nMachine: {hardware()}\n\n"
        f"Arch {opts.arch}, loss {opts.loss}, {opts.epochs} epochs, batch {opts.batch_size}, lr {opts.lr}.\n\n"
        f"{table}\nPer fold: `fold<k>/confusion.png`, `fold<k>/per_class.json`, `fold<k>/metrics.jsonl`.\n\n"
        f"Clips used: {len(clips.labels)}; skipped (missing or unreadable): {len(clips.skipped)}\n\n{skipped}"
    )
    (out_dir / "report.md").write_text(text)


def evaluate_checkpoint(
    checkpoint: Optional[Path] = typer.Argument(
        None, help="model checkpoint (.safetensors; default: the shipped model)"
    ),
    dataset: str = typer.Option(..., "--dataset", help="esc50 | esc10 | us8k"),
    data_dir: Path = typer.Option(..., "--data-dir", help="local copy in the official layout"),
    fold: int = typer.Option(..., "--fold", help="the fold to score"),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="torch | onnx (any registered engine); several, "
        "comma-separated (torch,onnx), also report how often they agree",
    ),
    batch: int = typer.Option(16, "--batch", help="clips per inference call"),
) -> None:
    """Score CHECKPOINT on one fold: JSON with accuracy, per-class accuracy, confusion matrix and each clip's
    prediction; with several backends, one such result each and the share of clips they predict alike."""
    from soundwatch.data.datasets import SPECS
    from soundwatch.engines import create_engine
    from soundwatch.labels import BACKGROUND_LABEL
    from soundwatch.models.card import read_card, resolve_model

    if dataset not in SPECS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(SPECS)}")
    if not 1 <= fold <= SPECS[dataset].n_folds:
        raise UserError(f"--fold {fold}: {dataset} has folds 1-{SPECS[dataset].n_folds}")
    checkpoint = resolve_model(checkpoint)
    read_card(checkpoint)  # a file that is no model (or a damaged card) is refused before a backend loads torch
    backends = [b.strip() for b in backend.split(",") if b.strip()]
    if not backends:
        raise UserError("--backend: name at least one backend (torch, onnx, ...)")
    results, clips = [], None
    for name in backends:
        engine = create_engine(name, checkpoint)
        if clips is None:
            clips = load_clips(dataset, Path(data_dir), engine.sample_rate)
        if [c for c in engine.classes if c != BACKGROUND_LABEL] != list(clips.classes):
            raise UserError(
                f"{checkpoint} was trained on {len(engine.classes)} classes that are not {dataset}'s "
                f"{len(clips.classes)} classes"
            )
        results.append({"checkpoint": str(checkpoint), **score(engine, clips, fold, batch)})
    if len(results) == 1:
        print(json.dumps(results[0], indent=1))
        return
    first = results[0]["predictions"]
    agreement = {
        r["backend"]: (sum(r["predictions"][k] == v for k, v in first.items()) / len(first) if first else None)
        for r in results[1:]
    }
    print(
        json.dumps(
            {"checkpoint": str(checkpoint), "results": results, f"agreement_with_{results[0]['backend']}": agreement},
            indent=1,
        )
    )


def score(engine, clips, fold: int, batch: int = 16) -> dict:
    """Accuracy of ``engine`` on ``fold`` of ``clips`` (deterministic: no augmentation).

    The prediction is the most probable of the dataset's classes (closed-set accuracy, the
    benchmark's); a model's ``background`` class is not one of them, and how many clips it would
    call background is reported as ``called_background``."""
    from soundwatch.labels import BACKGROUND_LABEL
    from soundwatch.train.report import confusion_matrix, per_class_accuracy

    idx = clips.indices([fold])
    classes = list(engine.classes)
    columns = [classes.index(c) for c in clips.classes]
    bg_column = classes.index(BACKGROUND_LABEL) if BACKGROUND_LABEL in classes else None
    preds, background = [], 0
    for i in range(0, len(idx), batch):
        waves = center_fit(np.asarray(clips.waves[idx[i : i + batch]], np.float32), engine.window_samples)
        logits = np.asarray(engine.infer(waves))
        preds.append(logits[:, columns].argmax(1))
        if bg_column is not None:
            background += int((logits.argmax(1) == bg_column).sum())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    labels = clips.labels[idx]
    cm = confusion_matrix(labels, pred, len(clips.classes))
    return {
        "backend": engine.name,
        "dataset": clips.name,
        "fold": fold,
        "n_clips": int(len(idx)),
        "accuracy": float((pred == labels).mean()) if len(idx) else None,
        "called_background": background,
        "per_class_accuracy": per_class_accuracy(cm, clips.classes),
        "skipped": len(clips.skipped),
        "skipped_files": clips.skipped,
        "confusion": cm.tolist(),
        "predictions": {clips.names[i]: clips.classes[int(p)] for i, p in zip(idx, pred)},
    }


def _refuse_stdout_onto(path: Path, what: str) -> None:
    """Refuse, before any work, a standard output redirected into ``path`` (``> adapted.json``): the
    command writes that file itself, and the two writers would garble each other at the end of the run."""
    try:
        clash = path.exists() and os.path.samestat(os.fstat(sys.stdout.fileno()), path.stat())
    except (OSError, ValueError, io.UnsupportedOperation):  # stdout closed or not a real file
        clash = False
    if clash:
        raise UserError(f"standard output goes into {path}, which is {what}; redirect the report to another file")


def adapt_command(
    checkpoint: Optional[Path] = typer.Argument(None, help="trained model (.safetensors; default: the shipped model)"),
    out: Path = typer.Option(..., "--out", help="where to write the adapted model (.safetensors)"),
    data_dir: Path = typer.Option(..., "--data-dir", help="ESC-50 at 16 kHz in the official layout"),
    corpus: Path = typer.Option(
        Path("data/background"), "--corpus", help="background corpus (scripts/build-background-corpus.sh)"
    ),
    manifest: Path = typer.Option(Path("data/background-manifest.csv"), "--manifest", help="its manifest"),
    epochs: int = typer.Option(20, "--epochs", min=1),
    mixed_per_clip: int = typer.Option(4, "--mixed-per-clip", min=0),
    background_windows: int = typer.Option(4000, "--background-windows", min=1),
    background_streams: int = typer.Option(
        12,
        "--background-streams",
        min=1,
        help="background streams of 2 minutes made per type (speech, music, tv; a third as many quiet) "
        "from the train split: more streams, more of the corpus heard",
    ),
    lr: float = typer.Option(3e-4, "--lr", min=0.0, help="learning rate of the trained top of each backbone"),
    head_lr: float = typer.Option(3e-3, "--head-lr", min=0.0, help="learning rate of the classifier and heads"),
    distill: float = typer.Option(
        0.0,
        "--distill",
        min=0.0,
        help="weight of keeping the model's own class distribution on clean clips (learning without forgetting; "
        "with --end-to-end the teacher is a frozen copy of each network before adaptation)",
    ),
    keep_classes: bool = typer.Option(
        False,
        "--keep-classes",
        help="learn only the background class: the model's own class scores stay as they were (use with --lr 0)",
    ),
    end_to_end: bool = typer.Option(
        False,
        "--end-to-end",
        help="train every layer on windows made afresh every epoch (no bank; a GPU job, or ~2 min a network per epoch "
        "on 2 CPU cores with --mixed-per-clip 1 --background-windows 800)",
    ),
    hard_negatives: float = typer.Option(
        0.0,
        "--hard-negatives",
        min=0.0,
        max=1.0,
        help="--end-to-end: this share of each epoch's background windows are the ones the network being trained "
        "most takes for an event, of --hard-pool times as many fresh candidates (hard-negative mining; 0 = off)",
    ),
    hard_pool: int = typer.Option(4, "--hard-pool", min=1, help="candidates scored per mined window"),
    batch_size: int = typer.Option(128, "--batch-size", min=2, help="windows per training step"),
    seed: int = typer.Option(0, "--seed"),
    bank: Optional[Path] = typer.Option(
        None,
        "--bank",
        help="cache the training windows' features here (reused when model, folds and window options match)",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's)"),
    device: str = typer.Option(
        "cpu", "--device", help="cpu | cuda: where the networks train (the windows are mixed on the CPU either way)"
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="continue a stopped --end-to-end run of the same --out and options from its last epoch "
        "(saved beside --out as <out>.partial.pt)",
    ),
) -> None:
    """Adapt a trained model to real rooms: events mixed over train-split backgrounds, a background class,
    open-set rejection calibrated on the validation split (see soundwatch/train/adapt.py). Trains only on the
    folds the model was trained on; prints a JSON report."""
    import logging

    from soundwatch.models.card import card_path, read_card, refuse_shipped_file, resolve_model

    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: give cpu or cuda")
    checkpoint = resolve_model(checkpoint)
    refuse_shipped_file("--out", out, "write the adapted model elsewhere and serve it with --model")
    same = Path(out).exists() and Path(out).resolve() == checkpoint.resolve()
    check_new_file(
        "--out",
        out,
        f"{'it is the model being adapted, and ' if same else ''}adapt never replaces a model: choose a new path, or "
        "remove it first",
    )
    card = read_card(checkpoint)
    folds = card.extra.get("folds", {}).get("train")
    if not folds:
        raise UserError(
            f"{checkpoint}: its card does not say which folds it was trained on; adapt needs them "
            "(it must not train on the held-out fold)"
        )
    if not Path(corpus).is_dir():
        raise UserError(f"background corpus {corpus} does not exist; build it with scripts/build-background-corpus.sh")
    _refuse_stdout_onto(card_path(out), "the model card adapt writes beside --out")
    check_output_file("--out", out, make_parents=True)  # hours of training must not end unable to save

    import torch  # only now: every refusal above comes at once, not after torch's import (4 s on a slow machine)

    from soundwatch.train.adapt import AdaptOptions, adapt
    from soundwatch.train.loop import git_commit

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine")
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("soundwatch").setLevel(logging.INFO)  # its progress lines, through the CLI's handler
    clips = load_clips("esc50", Path(data_dir), card.sample_rate)
    opts = AdaptOptions(
        epochs=epochs,
        mixed_per_clip=mixed_per_clip,
        background_windows=background_windows,
        streams_per_type=background_streams,
        lr=lr,
        head_lr=head_lr,
        distill=distill,
        keep_classes=keep_classes,
        end_to_end=end_to_end,
        hard_negatives=hard_negatives,
        hard_pool=hard_pool,
        batch_size=batch_size,
        seed=seed,
    )
    report = adapt(
        checkpoint,
        clips,
        list(folds),
        Path(corpus),
        Path(manifest),
        Path(out),
        opts,
        on_epoch=lambda r: print(json.dumps(r), file=sys.stderr, flush=True),
        commit=git_commit(),
        bank_file=bank,
        resume=resume,
        device=device,
    )
    print(json.dumps(report, indent=1))


def register(app: typer.Typer) -> None:
    """Add the offline-line commands to ``app``."""
    app.command("train")(train)
    app.command("eval")(evaluate_checkpoint)
    app.command("adapt")(adapt_command)
