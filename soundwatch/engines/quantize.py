"""INT8 post-training quantization: the fp32 export -> a symmetric Q/DQ ONNX graph.

TensorRT 11 builds INT8 engines only from explicitly quantized graphs, and the same
graph runs in ONNX Runtime on the CPU, so its accuracy can be measured without a GPU.
ONNX Runtime's ``quantize_static`` makes it, in QDQ format with TensorRT's constraints:
int8 activations and weights, symmetric (every zero point 0), weights per output
channel, no int32 bias quantization. Only the backbone is quantized (its Conv, ReLU6
Clip and residual Add nodes); the log-mel frontend (an 80 dB dynamic range), the
embedding normalisation and the classifier stay float32.

Calibration clips come from a manifest under ``calibration/``: a class-balanced draw
from ESC-50's training folds (2-5 by default; fold 1 is the held-out test fold). The
tensor ranges found are saved beside it as a JSON statistics file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from soundwatch.data.datasets import ClipSet
from soundwatch.engines.export import INPUT, META_SHA, cached_name, export_onnx, graph_metadata, save_atomic, stamp
from soundwatch.engines.graphs import current_int8_graph, int8_path  # noqa: F401 - the cache's, re-exported
from soundwatch.errors import UserError
from soundwatch.models.card import read_card

log = logging.getLogger(__name__)

TRAIN_FOLDS = (2, 3, 4, 5)
TEST_FOLD = 1
PER_CLASS = 8  # 4 gave -1.00 points on fold 1 for the shipped model, 8 gave -0.75
CALIB_BATCH = 8
QUANTIZED_OPS = ["Conv", "Clip", "Add"]  # Clip (ReLU6) too: its [0, 6] range replaces the wide conv output range
META_MANIFEST = "soundwatch.calibration_manifest_sha256"


def make_manifest(
    clips: ClipSet, folds: tuple[int, ...] = TRAIN_FOLDS, per_class: int = PER_CLASS, seed: int = 0
) -> dict:
    """A class-balanced, seeded draw of ``per_class`` clips per class from ``folds``."""
    rng = random.Random(seed)
    in_folds = set(clips.indices(list(folds)).tolist())
    chosen = []
    for label, category in enumerate(clips.classes):
        pool = sorted((clips.names[i], i) for i in np.flatnonzero(clips.labels == label) if i in in_folds)
        if len(pool) < per_class:
            raise UserError(f"class {category} has {len(pool)} clips in folds {folds}, need {per_class}")
        chosen += [
            {"name": name, "fold": int(clips.folds[i]), "category": category} for name, i in rng.sample(pool, per_class)
        ]
    return {"dataset": clips.name, "folds": list(folds), "per_class": per_class, "seed": seed, "clips": chosen}


def load_or_make_manifest(path: Path, clips: ClipSet, folds: tuple[int, ...], per_class: int) -> dict:
    """Read the manifest at ``path``; write a fresh one there first if it does not exist."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise UserError(f"--manifest {path}: not a file (a folder? a broken link?); give a manifest JSON file")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make_manifest(clips, folds, per_class), indent=1) + "\n")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"--manifest {path}: cannot read it as JSON ({exc})") from exc
    entries = manifest.get("clips") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in entries
    ):
        raise UserError(
            f'--manifest {path}: not a calibration manifest (a JSON object whose "clips" list names clips); '
            "it is left as it is: give another path, where a new one is made"
        )
    if TEST_FOLD in manifest.get("folds", []):
        log.warning("calibration manifest %s draws from fold %d, the held-out test fold", path, TEST_FOLD)
    return manifest


def manifest_batches(manifest: dict, clips: ClipSet, batch: int = CALIB_BATCH) -> list[np.ndarray]:
    index = {name: i for i, name in enumerate(clips.names)}
    missing = [c["name"] for c in manifest["clips"] if c["name"] not in index]
    if missing:
        raise UserError(f"calibration clips not in the data: {', '.join(missing[:5])}")
    rows = [index[c["name"]] for c in manifest["clips"]]
    return [np.asarray(clips.waves[rows[i : i + batch]]) for i in range(0, len(rows), batch)]


class _Batches:
    """ORT ``CalibrationDataReader``: one ``{INPUT: batch}`` feed per call, None at the end."""

    def __init__(self, batches: list[np.ndarray]):
        self.batches = batches
        self.feeds: Iterator[dict] = iter([])
        self.rewind()

    def get_next(self) -> dict | None:
        return next(self.feeds, None)

    def rewind(self) -> None:
        self.feeds = iter({INPUT: b} for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def backbone_nodes(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes the exporter scoped under a ``backbone`` module (each member's, in an ensemble)."""
    names = []
    for node in graph.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if scopes.startswith("['', 'backbone'") or re.match(r"\['', 'members\.\d+\.backbone'", scopes):
            names.append(node.name)
    if not names:
        raise RuntimeError("no backbone nodes found in the export (name scopes missing?); nothing to quantize")
    return names


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    checkpoint: Path,
    clips: ClipSet,
    manifest_path: Path,
    directory: Path | None = None,
    stats: Path | None = None,
    folds: tuple[int, ...] = TRAIN_FOLDS,
    per_class: int = PER_CLASS,
) -> Path:
    """Calibrate on the manifest's clips (drawn from ``clips``, ESC-50 at the model's rate, and written to
    ``manifest_path`` if it does not exist) and write the symmetric Q/DQ graph; returns its path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    checkpoint = Path(checkpoint)
    card = read_card(checkpoint)
    if clips.sample_rate != card.sample_rate:
        raise UserError(
            f"calibration clips are at {clips.sample_rate} Hz; {checkpoint.name} takes {card.sample_rate} Hz"
        )
    manifest = load_or_make_manifest(manifest_path, clips, folds, per_class)
    fp32 = export_onnx(checkpoint, precision="fp32", directory=directory)
    graph = onnx.load(str(fp32))
    sha256 = graph_metadata(fp32)[META_SHA]
    out = int8_path(checkpoint, directory)
    stats = (
        Path(stats) if stats else Path(manifest_path).parent / cached_name(checkpoint, sha256, "int8-ranges", ".json")
    )
    stats.unlink(missing_ok=True)  # calibrate anew: the cache file is written as the statistics record
    tmp = out.with_suffix(".quantizing.onnx")
    with _quiet_root_logger():  # ORT logs a generic 'consider pre-processing' warning on the root logger
        quantize_static(
            graph,
            tmp,
            _Batches(manifest_batches(manifest, clips)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_quantize=backbone_nodes(graph),
            calibration_cache_path=stats,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "DedicatedQDQPair": True,
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
                "CalibMaxIntermediateOutputs": 4,
            },
        )
    quantized = onnx.load(str(tmp))
    tmp.unlink()
    stamp(quantized, card, sha256, "int8")
    quantized.metadata_props.add(key=META_MANIFEST, value=hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest())
    return save_atomic(quantized, out)


@dataclass
class FoldComparison:
    fold: int
    clips: int
    top1_fp32: float
    top1_int8: float
    agreement: float  # share of clips where both graphs give the same top-1
    embedding_cosine: float  # mean cosine between the fp32 and INT8 embeddings


def compare_on_fold(
    checkpoint: Path,
    clips: ClipSet,
    fold: int = TEST_FOLD,
    directory: Path | None = None,
    threads: int = 0,
    limit: int | None = None,
    batch: int = 16,
) -> FoldComparison:
    """fp32 vs INT8 graphs (ONNX Runtime, CPU) on the clips of ESC-50 ``fold`` of ``clips`` (the first ``limit``)."""
    from soundwatch.engines.onnx_engine import OnnxEngine

    engines = {p: OnnxEngine(checkpoint, threads=threads, precision=p, engines_dir=directory) for p in ("fp32", "int8")}
    card = engines["fp32"].card
    unknown = sorted(set(clips.classes) - set(card.classes))
    if unknown:
        raise UserError(f"{checkpoint} has no class for ESC-50's {', '.join(unknown[:5])}; cannot score fold {fold}")
    rows = clips.indices([fold])[:limit]
    labels = np.array([card.classes.index(clips.classes[k]) for k in clips.labels[rows]])
    outputs: dict[str, list] = {p: [] for p in engines}
    for i in range(0, len(rows), batch):
        waves = np.asarray(clips.waves[rows[i : i + batch]])
        for precision, engine in engines.items():
            outputs[precision].append(engine.session.run(None, {INPUT: engine.check_input(waves)}))
    (l32, e32), (l8, e8) = ([np.concatenate(o) for o in zip(*outputs[p])] for p in ("fp32", "int8"))
    return FoldComparison(
        fold,
        len(rows),
        float((l32.argmax(1) == labels).mean()),
        float((l8.argmax(1) == labels).mean()),
        float((l32.argmax(1) == l8.argmax(1)).mean()),
        float((e32 * e8).sum(1).mean()),
    )
