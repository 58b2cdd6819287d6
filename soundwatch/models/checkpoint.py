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

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from soundwatch.errors import CheckpointError
from soundwatch.labels import BACKGROUND_LABEL

# The card and the file readers live in card.py (no torch: the serving path uses them); they are
# re-exported here for the code that builds networks.
from soundwatch.models.card import (  # noqa: F401
    DEFAULT_MODEL,
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    PROJ_DIM,
    FrontendConfig,
    ModelCard,
    card_path,
    file_digest,
    file_sha256,
    read_card,
    resolve_model,
    verify_weights,
    weights_digest,
)
from soundwatch.models.soundclr import ClassGate, OpenSet, SoundCLR, SoundCLREnsemble, TwoTopEnsemble

log = logging.getLogger(__name__)


def build_model(card: ModelCard, pretrained: bool = False, weights: Path | None = None) -> SoundCLR | SoundCLREnsemble:
    if card.frontend_config.sample_rate != card.sample_rate:
        raise CheckpointError(
            f"model card: frontend sample_rate {card.frontend_config.sample_rate} != sample_rate {card.sample_rate}"
        )
    two_tops = card.extra.get("two_tops")
    if two_tops is not None:
        model = _two_top_model(card, two_tops)
    elif card.members > 1:
        if pretrained or weights:
            raise CheckpointError(
                "an ensemble is assembled from trained networks (scripts/ship_model.py), "
                "not initialised from ImageNet weights"
            )
        model = SoundCLREnsemble(
            card.arch, len(card.classes), card.frontend_config, card.members, card.proj_dim, card.projector
        )
    else:
        model = SoundCLR(
            card.arch,
            len(card.classes),
            card.frontend_config,
            pretrained,
            weights,
            card.proj_dim,
            projector=card.projector,
        )
    open_set = card.extra.get("open_set")
    if open_set is not None:
        if not card.classes or card.classes[-1] != BACKGROUND_LABEL:
            raise CheckpointError(f"model card: open_set needs {BACKGROUND_LABEL!r} as the last class")
        try:
            tau, sharpness = float(open_set["tau"]), float(open_set["sharpness"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"model card: open_set needs numbers tau and sharpness ({exc})") from exc
        if not (math.isfinite(tau) and math.isfinite(sharpness) and sharpness > 0):
            raise CheckpointError(
                f"model card: open_set tau {tau} and sharpness {sharpness} must be finite, sharpness over 0"
            )
        model.open_set = OpenSet(len(card.classes) - 1, model.embed_dim, tau, sharpness)
    return model


def _two_top_model(card: ModelCard, spec: Any) -> TwoTopEnsemble:
    if not card.classes or card.classes[-1] != BACKGROUND_LABEL:
        raise CheckpointError(f"model card: two_tops needs {BACKGROUND_LABEL!r} as the last class")
    try:
        weight = float(spec["class_weight"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model card: two_tops needs a number class_weight ({exc})") from exc
    if not 0.0 <= weight <= 1.0:
        raise CheckpointError(f"model card: two_tops class_weight {weight} must be in [0, 1]")
    gate = None
    if spec.get("class_gate") is not None:
        try:
            gate = ClassGate(**{k: float(v) for k, v in spec["class_gate"].items()})
        except (AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"model card: two_tops class_gate must map below_db, share_at and width to numbers ({exc})"
            ) from exc
        if not (gate.below_db > 0 and 0 <= gate.share_at <= 1 and gate.width > 0):
            raise CheckpointError(f"model card: two_tops class_gate {gate.to_dict()} is out of range")
    try:
        return TwoTopEnsemble(
            card.arch, len(card.classes) - 1, card.frontend_config, card.members, weight, card.proj_dim, gate
        )
    except ValueError as exc:
        raise CheckpointError(f"model card: two_tops: {exc}") from exc


def save_state_atomic(state, path: Path) -> Path:
    """``torch.save`` through a temporary file beside ``path``, so a stopped process never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def save_checkpoint(
    path: Path, model: SoundCLR | SoundCLREnsemble, card: ModelCard, dtype: torch.dtype = torch.float32
) -> Path:
    """Write weights (cast to ``dtype``) and the card into ``path``, and the card as ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = card.to_dict()
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    meta[DIGEST_KEY] = weights_digest(tmp)  # the tensor bytes do not depend on the header
    save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.chmod(0o644)  # safetensors creates 0600; a model is no secret, and a daemon's own user must read it
    tmp.replace(path)
    card_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_checkpoint(path: Path, expect: dict[str, Any] | None = None) -> tuple[SoundCLR | SoundCLREnsemble, ModelCard]:
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
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensors hold NaN or infinity ({bad[0]}, ...); the file is damaged"
        )
    try:
        result = model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{path}: weights do not fit {card.describe()}: {str(exc).splitlines()[-1].strip()}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {card.describe()} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.eval(), card
