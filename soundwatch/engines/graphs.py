"""The exported graphs' contract and cache, without torch: what ``listen`` with ONNX Runtime needs.

An export is one ONNX graph from a waveform window (input ``wave``) to ``(logits, embedding)``,
cached under the engines directory with a name keyed by the checkpoint's sha256 and the precision,
and stamped with what it was built from (``soundwatch.*`` metadata). ``export.py`` builds them
(with torch); the engines find a current one here, so serving a model whose graph exists imports
no torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from soundwatch.errors import UserError
from soundwatch.models.card import file_sha256

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the graph layout changes: cached exports are then rebuilt
INPUT = "wave"
OUTPUTS = ("logits", "embedding")
PRECISIONS = ("fp32", "fp16")
MAX_BATCH = 4096
FORBIDDEN_OPS = frozenset({"STFT", "DFT", "MelWeightMatrix"})  # not parsed by TensorRT < 11.2 (see notes)
ENGINES_ENV = "SOUNDWATCH_ENGINES"
CHECKOUT_ENGINES = Path(__file__).resolve().parents[2] / "engines"

META_CARD = "soundwatch.card"
META_SHA = "soundwatch.checkpoint_sha256"
META_PRECISION = "soundwatch.precision"
META_VERSION = "soundwatch.export_version"


def check_precision(precision: str) -> None:
    """UserError unless ``precision`` is one an export can have."""
    if precision not in PRECISIONS:
        raise UserError(f"export precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def engines_dir(directory: Path | None = None) -> Path:
    """Where built engines go: ``directory``, else $SOUNDWATCH_ENGINES, else the checkout's
    ``engines/``, else ``~/.cache/soundwatch/engines`` (an installed, non-editable package)."""
    if directory is not None:
        return Path(directory)
    if os.environ.get(ENGINES_ENV):
        return Path(os.environ[ENGINES_ENV])
    if CHECKOUT_ENGINES.is_dir():
        return CHECKOUT_ENGINES
    return Path.home() / ".cache" / "soundwatch" / "engines"


class BuildWaitStopped(Exception):
    """A stop was asked for (``stop_waiting``) while this process waited for another one's build."""


# What a waiting ``building`` asks, every WAIT_POLL_S, to give up: listen sets it to its stop event
# (SIGINT/SIGTERM), so a daemon waiting on another process's export or TensorRT build stops at once.
stop_waiting: Callable[[], bool] = lambda: False  # noqa: E731
WAIT_POLL_S = 0.2


def build_lock(path: Path) -> Path:
    """The lock file ``building`` holds while ``path`` is built."""
    return Path(path).with_name(Path(path).name + ".lock")


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` while the cached artefact ``path`` is built, so processes
    that start together on a cold cache (two daemons, a daemon and eval-scenes) build it once: the later
    ones wait, then find the first one's file current. Where no lock file can be made there (a read-only
    directory), building goes on unlocked and its own write reports the problem. BuildWaitStopped when
    ``stop_waiting()`` turns true while waiting."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(build_lock(path), "a")  # noqa: SIM115 (closed below)
    except OSError:
        yield
        return
    with lock:
        for attempt in itertools.count():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 0:
                    log.warning("another process is building %s; waiting for it", path.name)
                if stop_waiting():
                    raise BuildWaitStopped(f"stopped while another process was building {path.name}") from None
                time.sleep(WAIT_POLL_S)
            except OSError:  # a file system without locks (some network mounts): build unlocked, as before
                break
        yield  # the lock goes with the file's closing


def cached_name(checkpoint: Path, sha256: str, tag: str, suffix: str = ".onnx") -> str:
    """``<checkpoint stem>-<sha256 prefix>-<tag><suffix>``: one file per checkpoint content and variant."""
    return f"{Path(checkpoint).stem}-{sha256[:16]}-{tag}{suffix}"


@functools.cache
def _metadata_only_model():
    """A protobuf message class for the one part of onnx.proto's ModelProto that ``graph_metadata`` reads:
    ``repeated StringStringEntryProto metadata_props = 14`` (``key = 1``, ``value = 2``). Parsing an ONNX file
    with it skips every other field (the graph among them) as unknown, as protobuf parses any subset of a
    message's fields. The onnx package is not imported for this: its import took 1.2 s of a 3.1 s `listen`
    start on an AVX2 machine here (its ml_dtypes extension), on every start of the serving path."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="soundwatch/onnx_metadata.proto", package="soundwatch_onnx")
    entry = schema.message_type.add(name="StringStringEntryProto")
    entry.field.add(name="key", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    model = schema.message_type.add(name="ModelProto")
    model.field.add(
        name="metadata_props",
        number=14,
        type=fdp.TYPE_MESSAGE,
        label=fdp.LABEL_REPEATED,
        type_name=".soundwatch_onnx.StringStringEntryProto",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("soundwatch_onnx.ModelProto"))


def graph_metadata(path: Path) -> dict[str, str]:
    """The soundwatch keys of an ONNX file's metadata (empty if unreadable)."""
    try:
        model = _metadata_only_model().FromString(Path(path).read_bytes())
    except Exception:  # a truncated or foreign file (or none) is simply not a usable cache entry
        return {}
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("soundwatch.")}


def is_current(path: Path, sha256: str, precision: str) -> bool:
    """Whether ``path`` is an export of the checkpoint with ``sha256`` at ``precision`` by this code."""
    meta = graph_metadata(path) if Path(path).is_file() else {}
    return (
        meta.get(META_SHA) == sha256
        and meta.get(META_PRECISION) == precision
        and meta.get(META_VERSION) == str(EXPORT_VERSION)
    )


def cached_export(checkpoint: Path, sha256: str, precision: str, directory: Path | None = None) -> Path | None:
    """The current cached export of ``checkpoint`` at ``precision``, or None when it must be (re)built."""
    path = engines_dir(directory) / cached_name(checkpoint, sha256, precision)
    return path if is_current(path, sha256, precision) else None


def int8_path(checkpoint: Path, directory: Path | None = None) -> Path:
    return engines_dir(directory) / cached_name(checkpoint, file_sha256(checkpoint), "int8")


def current_int8_graph(checkpoint: Path, directory: Path | None = None) -> Path:
    """The INT8 graph made from ``checkpoint`` as it is now; UserError if it was never calibrated."""
    path = int8_path(checkpoint, directory)
    if not is_current(path, file_sha256(checkpoint), "int8"):
        raise UserError(
            f"no INT8 graph for {checkpoint} (looked for {path}); run `soundwatch calibrate int8 {checkpoint}` first"
        )
    return path


def serving_graph(checkpoint: Path, precision: str, directory: Path | None = None) -> Path:
    """The graph an engine serves at ``precision``: the calibrated INT8 graph (which ``soundwatch calibrate int8``
    must have made), else the current cached export, else a new export (the only case that imports torch)."""
    if precision == "int8":
        return current_int8_graph(checkpoint, directory)
    cached = cached_export(checkpoint, file_sha256(checkpoint), precision, directory)
    if cached is not None:
        return cached
    from soundwatch.engines.export import export_onnx

    return export_onnx(checkpoint, precision=precision, directory=directory)
