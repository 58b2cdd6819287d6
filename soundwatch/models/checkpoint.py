"""The checkpoint format: one safetensors file whose header carries the model card.

The card (JSON, under the ``soundwatch`` metadata key) says what the weights need:
architecture, class list, sample rate, window length and frontend parameters, how many
networks it holds (``members``: more than one is an ensemble whose probabilities are
averaged) and whether the training-only projection head is stored (``projector``), plus
whatever the trainer records (data, metrics, licence). The card also carries
``weights_sha256``, the digest of the file's tensor bytes (everything after the safetensors
header), checked at every load so a damaged file is refused instead of served; its weights
must also be finite. Format version 2 marks files that
use either of the last two; a plain single network with its projector is still version 1,
so older soundwatch releases keep reading what they can run. A sidecar ``<name>.json`` copy is
written for people to read. Loading checks the card against what the caller expects
and refuses a mismatch with both values in the message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from soundwatch.dsp.frontend import FrontendConfig
from soundwatch.errors import CheckpointError
from soundwatch.labels import BACKGROUND_LABEL
from soundwatch.models.soundclr import PROJ_DIM, OpenSet, SoundCLR, SoundCLREnsemble

FORMAT = "soundwatch-checkpoint"
FORMAT_VERSION = 2
META_KEY = "soundwatch"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "soundclr-esc50-effl0.safetensors"
DIGEST_KEY = "weights_sha256"

log = logging.getLogger(__name__)


@dataclass
class ModelCard:
    """What a checkpoint is: enough to rebuild the network and feed it correctly."""

    arch: str
    classes: list[str]
    sample_rate: int
    window_s: float = 5.0
    frontend: dict = field(default_factory=lambda: FrontendConfig().to_dict())
    proj_dim: int = PROJ_DIM
    members: int = 1  # networks in the file; > 1: an ensemble (mean of their probabilities)
    projector: bool = True  # whether the training-only projection head is stored
    extra: dict = field(default_factory=dict)  # trainer's record: data, metrics, licence, ...

    @property
    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.frontend)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    def to_dict(self) -> dict:
        plain = self.members == 1 and self.projector
        layout = {} if plain else {"members": self.members, "projector": self.projector}
        return {
            "format": FORMAT, "format_version": 1 if plain else FORMAT_VERSION, "arch": self.arch,
            "classes": self.classes, "sample_rate": self.sample_rate, "window_s": self.window_s,
            "frontend": self.frontend, "proj_dim": self.proj_dim, **layout, **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "checkpoint") -> "ModelCard":
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a soundwatch checkpoint (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: checkpoint format version {data['format_version']} is newer than this soundwatch "
                f"understands ({FORMAT_VERSION}); upgrade soundwatch"
            )
        missing = [k for k in ("arch", "classes", "sample_rate") if k not in data]
        if missing:
            raise CheckpointError(f"{source}: model card lacks {', '.join(missing)}")
        members = data.get("members", 1)
        if not isinstance(members, int) or isinstance(members, bool) or members < 1:
            raise CheckpointError(f"{source}: model card members is {members!r}, expected a whole number >= 1")
        core = {"format", "format_version", "arch", "classes", "sample_rate", "window_s", "frontend", "proj_dim",
                "members", "projector"}
        return cls(
            arch=data["arch"], classes=list(data["classes"]), sample_rate=int(data["sample_rate"]),
            window_s=float(data.get("window_s", 5.0)), frontend=dict(data.get("frontend", {})),
            proj_dim=int(data.get("proj_dim", PROJ_DIM)), members=members,
            projector=bool(data.get("projector", True)),
            extra={k: v for k, v in data.items() if k not in core},
        )

    def describe(self) -> str:
        """'a tiny SoundCLR with 50 classes', 'an ensemble of 2 efficientnet_lite0 SoundCLRs with 50 classes'."""
        if self.members > 1:
            return f"an ensemble of {self.members} {self.arch} SoundCLRs with {len(self.classes)} classes"
        return f"a {self.arch} SoundCLR with {len(self.classes)} classes"

    def check(self, expect: dict[str, Any], source: str) -> None:
        """Refuse the card if any expected field differs: says what was expected and what was found."""
        found = self.to_dict()
        for key, want in expect.items():
            have = found.get(key)
            if key == "frontend":
                have = {k: have.get(k) for k in want}
            if have != want:
                raise CheckpointError(f"{source}: {key} is {have!r}, expected {want!r}; this model does not match")


def build_model(card: ModelCard, pretrained: bool = False,
                weights: Path | None = None) -> SoundCLR | SoundCLREnsemble:
    if card.frontend_config.sample_rate != card.sample_rate:
        raise CheckpointError(
            f"model card: frontend sample_rate {card.frontend_config.sample_rate} != sample_rate {card.sample_rate}"
        )
    if card.members > 1:
        if pretrained or weights:
            raise CheckpointError("an ensemble is assembled from trained networks (scripts/ship_model.py), "
                                  "not initialised from ImageNet weights")
        model = SoundCLREnsemble(card.arch, len(card.classes), card.frontend_config, card.members, card.proj_dim,
                                 card.projector)
    else:
        model = SoundCLR(card.arch, len(card.classes), card.frontend_config, pretrained, weights, card.proj_dim,
                         projector=card.projector)
    open_set = card.extra.get("open_set")
    if open_set is not None:
        if not card.classes or card.classes[-1] != BACKGROUND_LABEL:
            raise CheckpointError(f"model card: open_set needs {BACKGROUND_LABEL!r} as the last class")
        try:
            tau, sharpness = float(open_set["tau"]), float(open_set["sharpness"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"model card: open_set needs numbers tau and sharpness ({exc})") from exc
        if not (math.isfinite(tau) and math.isfinite(sharpness) and sharpness > 0):
            raise CheckpointError(f"model card: open_set tau {tau} and sharpness {sharpness} must be finite, "
                                  "sharpness over 0")
        model.open_set = OpenSet(len(card.classes) - 1, model.embed_dim, tau, sharpness)
    return model


def save_checkpoint(path: Path, model: SoundCLR | SoundCLREnsemble, card: ModelCard,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write weights (cast to ``dtype``) and the card into ``path``, and the card as ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    meta = card.to_dict()
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    meta[DIGEST_KEY] = weights_digest(tmp)  # the tensor bytes do not depend on the header
    save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _header_length(path: Path) -> int:
    """Bytes taken by a safetensors file's length prefix and JSON header (the tensor bytes follow)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: not a safetensors checkpoint (file too short)")
    return 8 + struct.unpack("<Q", prefix)[0]


def weights_digest(path: Path) -> str:
    """sha256 of the tensor bytes of a safetensors file (what follows its header)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(_header_length(path))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from exc


def read_card(path: Path) -> ModelCard:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist" if not path.exists()
                              else f"model file {path} is not a regular file")
    meta = _read_meta(path)
    if META_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a soundwatch model card (metadata key {META_KEY!r})")
    try:
        data = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the model card is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the model card is a JSON {type(data).__name__}, not an object; "
                              "the file is damaged")
    return ModelCard.from_dict(data, source=str(path))


def verify_weights(path: Path, card: ModelCard) -> None:
    """Refuse a file whose tensor bytes do not match the card's digest (damaged or tampered with)."""
    want = card.extra.get(DIGEST_KEY)
    if want is None:
        log.warning("%s: the model card has no %s, so damage to the weights cannot be detected; "
                    "re-save it with scripts/ship_model.py or `soundwatch train`", path, DIGEST_KEY)
        return
    have = weights_digest(path)
    if have != want:
        raise CheckpointError(f"{path}: the weights do not match the model card's digest "
                              f"({DIGEST_KEY} {want[:16]}..., the file's tensors hash to {have[:16]}...): "
                              "the file is damaged; reinstall or re-download it")


def load_checkpoint(path: Path,
                    expect: dict[str, Any] | None = None) -> tuple[SoundCLR | SoundCLREnsemble, ModelCard]:
    """Rebuild the network from ``path`` (float32, eval mode, CPU); refuse mismatches."""
    path = Path(path)
    card = read_card(path)
    if expect:
        card.check(expect, str(path))
    verify_weights(path, card)
    model = build_model(card)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc}); the file is damaged") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or infinity ({bad[0]}, ...); "
                              "the file is damaged")
    try:
        result = model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                       strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit {card.describe()}: "
                              f"{str(exc).splitlines()[-1].strip()}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {card.describe()} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.eval(), card


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(path: Path | None) -> Path:
    """The checkpoint to serve: ``path``, else the model shipped in the package."""
    if path is not None:
        return Path(path)
    if not DEFAULT_MODEL.is_file():
        raise CheckpointError(
            f"no model given and the default model {DEFAULT_MODEL.name} is not installed; "
            "pass --model CHECKPOINT (train one with `soundwatch train esc50`)"
        )
    return DEFAULT_MODEL
