"""What a checkpoint is, read without torch: the model card, its file's digests, the shipped model's path.

The serving path (``listen`` with ONNX Runtime) reads the card and hashes the file to find its
cached ONNX graph, and needs nothing else from the checkpoint; keeping these here, apart from
``checkpoint.py`` (which builds networks with torch), lets it start without importing torch.
The format itself is described in ``soundwatch/models/checkpoint.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from soundwatch.errors import CheckpointError, UserError

FORMAT = "soundwatch-checkpoint"
FORMAT_VERSION = 2
META_KEY = "soundwatch"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "soundclr-esc50-effl0.safetensors"
DIGEST_KEY = "weights_sha256"
PROJ_DIM = 64  # the SupCon projection's output size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendConfig:
    """Everything that defines the frontend; stored in every checkpoint."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    top_db: float = 80.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FrontendConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for a clip of ``n_samples`` (centred framing)."""
        return 1 + n_samples // self.hop_length


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
            "format": FORMAT,
            "format_version": 1 if plain else FORMAT_VERSION,
            "arch": self.arch,
            "classes": self.classes,
            "sample_rate": self.sample_rate,
            "window_s": self.window_s,
            "frontend": self.frontend,
            "proj_dim": self.proj_dim,
            **layout,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "checkpoint") -> "ModelCard":
        if data.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not a soundwatch checkpoint (format {data.get('format')!r}, expected {FORMAT!r})"
            )
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
        core = {
            "format",
            "format_version",
            "arch",
            "classes",
            "sample_rate",
            "window_s",
            "frontend",
            "proj_dim",
            "members",
            "projector",
        }
        return cls(
            arch=data["arch"],
            classes=list(data["classes"]),
            sample_rate=int(data["sample_rate"]),
            window_s=float(data.get("window_s", 5.0)),
            frontend=dict(data.get("frontend", {})),
            proj_dim=int(data.get("proj_dim", PROJ_DIM)),
            members=members,
            projector=bool(data.get("projector", True)),
            extra={k: v for k, v in data.items() if k not in core},
        )

    def describe(self) -> str:
        """'a tiny SoundCLR with 50 classes', 'an ensemble of 2 efficientnet_lite0 SoundCLRs with 50 classes'."""
        if self.members > 1:
            tops = " (each with a clean and a room top)" if "two_tops" in self.extra else ""
            return f"an ensemble of {self.members} {self.arch} SoundCLRs{tops} with {len(self.classes)} classes"
        tops = " with a clean and a room top" if "two_tops" in self.extra else ""
        return f"a {self.arch} SoundCLR{tops} with {len(self.classes)} classes"

    def check(self, expect: dict[str, Any], source: str) -> None:
        """Refuse the card if any expected field differs: says what was expected and what was found."""
        found = self.to_dict()
        for key, want in expect.items():
            have = found.get(key)
            if key == "frontend":
                have = {k: have.get(k) for k in want}
            if have != want:
                raise CheckpointError(f"{source}: {key} is {have!r}, expected {want!r}; this model does not match")


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
        with safe_open(str(path), framework="numpy") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from exc


def card_path(path: Path) -> Path:
    """The JSON copy of a checkpoint's card that ``save_checkpoint`` writes beside it."""
    return Path(path).with_suffix(".json")


def read_card(path: Path) -> ModelCard:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"model file {path} does not exist" if not path.exists() else f"model file {path} is not a regular file"
        )
    meta = _read_meta(path)
    if META_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a soundwatch model card (metadata key {META_KEY!r})")
    try:
        data = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the model card is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: the model card is a JSON {type(data).__name__}, not an object; the file is damaged"
        )
    return ModelCard.from_dict(data, source=str(path))


def verify_weights(path: Path, card: ModelCard) -> None:
    """Refuse a file whose tensor bytes do not match the card's digest (damaged or tampered with)."""
    want = card.extra.get(DIGEST_KEY)
    if want is None:
        log.warning(
            "%s: the model card has no %s, so damage to the weights cannot be detected; "
            "re-save it with scripts/ship_model.py or `soundwatch train`",
            path,
            DIGEST_KEY,
        )
        return
    have = weights_digest(path)
    if have != want:
        raise CheckpointError(
            f"{path}: the weights do not match the model card's digest "
            f"({DIGEST_KEY} {want[:16]}..., the file's tensors hash to {have[:16]}...): "
            "the file is damaged; reinstall or re-download it"
        )


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes; hashed once per file version (path, size, mtime) per process."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path), "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def refuse_shipped_file(flag: str, path: Path, instead: str) -> None:
    """A UserError when ``path`` is one of the files shipped beside the default model (its thresholds,
    its music context): a calibration of the user's own goes elsewhere, so the shipped file (and what
    was measured with it) is never lost; ``instead`` says where and how to use it."""
    shipped = DEFAULT_MODEL.parent.resolve()
    if Path(path).expanduser().resolve().parent == shipped and Path(path).name.startswith(DEFAULT_MODEL.stem):
        raise UserError(f"{flag} {path}: is a file shipped with soundwatch beside its model; {instead}")


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
