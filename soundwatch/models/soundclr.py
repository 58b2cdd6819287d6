"""The SoundCLR network: log-mel frontend -> ImageNet CNN -> L2-normalised embedding -> two heads.

``forward(wave)`` is the serving path (raw waveform in, ``(logits, embedding)`` out, the
graph that ONNX/TensorRT export). The trainer calls ``frontend`` itself, augments the
spectrogram, then ``forward_spec`` to get the projection for the contrastive loss too.

``SoundCLREnsemble`` serves several independently trained networks as one model with the
same ``forward`` contract: one shared frontend, the mean of the members' class
probabilities (returned as its log, so softmax downstream gives that mean back).

``OpenSet`` is the open-set rejection a model adapted to real rooms carries
(``soundwatch adapt``): its last class is ``background`` ("none of the others"), and the
probability of every other class is scaled by a gate on how close the window's unit
embedding comes to that class's prototype (the mean training embedding); what the gate
takes away goes to ``background``. It is part of ``forward``, so every exported graph
(ONNX, TensorRT) does the same.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from soundwatch.dsp.frontend import FrontendConfig, LogMel
from soundwatch.models.backbones import create_backbone
from soundwatch.models.card import PROJ_DIM  # the card records it

DB_CENTER = 40.0  # frontend output is in [-80, 0] dB; (db + 40) / 40 maps it to [-1, 1]


def spec_to_image(spec: torch.Tensor) -> torch.Tensor:
    """Log-mel dB (batch, mels, frames) -> the 3-channel image a backbone reads, values in about [-1, 1]."""
    return ((spec + DB_CENTER) / DB_CENTER).unsqueeze(1).expand(-1, 3, -1, -1)


def ensemble_embedding(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Members' unit embeddings concatenated and scaled by 1/sqrt(members): a unit embedding again."""
    return torch.cat(embeddings, dim=1) / math.sqrt(len(embeddings))


def log_mean_softmax(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean of the softmax distributions, as max + log(mean(exp(x - max))) over log-softmaxes."""
    logp = [nn.functional.log_softmax(x, dim=1) for x in logits]
    top = logp[0]
    for x in logp[1:]:
        top = torch.maximum(top, x)
    return top + torch.log(sum(torch.exp(x - top) for x in logp) / len(logp))


class OpenSet(nn.Module):
    """Log-probabilities over (events..., background) from logits over the same classes and a unit embedding.

    ``s = max_c cos(embedding, prototype_c)`` over the event classes; the gate is
    ``g = sigmoid(sharpness * (s - tau))``; event ``c`` gets ``p_c * g`` and background gets
    ``p_bg + (1 - p_bg) * (1 - g)``, so the output is still a distribution (returned as its
    log). A window close to some class's prototype (``s`` well over ``tau``) keeps its
    probabilities; one far from all of them (speech, music, anything the classes do not
    hold) hands them to background. Written with LogSoftmax, MatMul, ReduceMax, Softplus,
    ReduceLogSumExp, Max, Exp and Log: all in onnx-tensorrt's supported operators.
    """

    def __init__(self, n_events: int, dim: int, tau: float, sharpness: float):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(n_events, dim))
        self.tau = float(tau)
        self.sharpness = float(sharpness)

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        """(batch,) highest cosine similarity of each unit embedding to a class prototype."""
        return (embedding @ self.prototypes.T).amax(dim=1)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        logp = nn.functional.log_softmax(logits, dim=1)
        events, background = logp[:, :-1], logp[:, -1:]
        z = self.sharpness * (self.similarity(embedding).unsqueeze(1) - self.tau)
        log_keep = -nn.functional.softplus(-z)  # log g
        log_drop = -nn.functional.softplus(z)  # log (1 - g)
        moved = torch.logsumexp(events, dim=1, keepdim=True) + log_drop  # (1 - p_bg) * (1 - g)
        top = torch.maximum(background, moved)
        background = top + torch.log(torch.exp(background - top) + torch.exp(moved - top))
        return torch.cat([events + log_keep, background], dim=1)


class SoundCLR(nn.Module):
    """SoundCLR (Nasiri & Hu, 2021) around a named backbone.

    The classifier reads the L2-normalised embedding; its logits are multiplied by a
    learnable scale (initialised to ``logit_scale``) so cross-entropy is not stalled by
    the tiny logits a unit-norm input gives.
    """

    def __init__(
        self,
        arch: str,
        n_classes: int,
        frontend: FrontendConfig = FrontendConfig(),
        pretrained: bool = False,
        weights: Path | None = None,
        proj_dim: int = PROJ_DIM,
        logit_scale: float = 10.0,
        projector: bool = True,
    ):
        super().__init__()
        self.arch = arch
        self.frontend = LogMel(frontend)
        self.backbone, self.embed_dim = create_backbone(arch, pretrained, weights)
        self.classifier = nn.Linear(self.embed_dim, n_classes)
        # The projection head only feeds the contrastive loss; serving checkpoints may leave it out.
        self.projector = (
            nn.Sequential(
                nn.Linear(self.embed_dim, self.embed_dim), nn.ReLU(inplace=True), nn.Linear(self.embed_dim, proj_dim)
            )
            if projector
            else None
        )
        self.log_logit_scale = nn.Parameter(torch.tensor(float(logit_scale)).log())
        self.open_set: OpenSet | None = None

    def embed(self, spec: torch.Tensor) -> torch.Tensor:
        """Log-mel dB (batch, mels, frames) -> unit-norm embedding (batch, embed_dim)."""
        return nn.functional.normalize(self.backbone(spec_to_image(spec)), dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(embedding) * self.log_logit_scale.exp()

    def forward_spec(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spectrogram -> (logits, embedding, unit-norm projection for SupCon)."""
        if self.projector is None:
            raise RuntimeError(
                "this SoundCLR was built without its projection head (a serving checkpoint); "
                "train from a full checkpoint"
            )
        emb = self.embed(spec)
        proj = nn.functional.normalize(self.projector(emb), dim=1)
        return self.classify(emb), emb, proj

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform (batch, samples) at the model's rate -> (logits, embedding)."""
        emb = self.embed(self.frontend(wave))
        logits = self.classify(emb)
        if self.open_set is not None:
            logits = self.open_set(logits, emb)
        return logits, emb


class SoundCLREnsemble(nn.Module):
    """``members`` SoundCLR networks of one architecture behind one frontend.

    ``forward(wave)`` returns ``(log p, embedding)`` where ``p`` is the mean of the members'
    softmax distributions and the embedding is the members' unit embeddings concatenated
    and scaled by 1/sqrt(members), so it is unit-norm too. The log-mean is computed from the
    members' log-softmax as max + log(mean(exp(x - max))): LogSoftmax, Max, Sub, Exp, Add,
    Div and Log in the exported graph, all in onnx-tensorrt's supported-operator list.
    One member is allowed: a single network behind the ensemble's interface (its log-softmax and
    its own embedding), which the two-top model of one network (``TwoTopEnsemble``) is built on.
    """

    def __init__(
        self,
        arch: str,
        n_classes: int,
        frontend: FrontendConfig = FrontendConfig(),
        members: int = 2,
        proj_dim: int = PROJ_DIM,
        projector: bool = False,
    ):
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least 1 member, not {members}")
        self.arch = arch
        self.frontend = LogMel(frontend)
        self.members = nn.ModuleList(
            SoundCLR(arch, n_classes, frontend, proj_dim=proj_dim, projector=projector) for _ in range(members)
        )
        self.open_set: OpenSet | None = None

    def member_outputs(self, wave: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each member's ``(logits, embedding)`` for a waveform batch, the frontend run once."""
        spec = self.frontend(wave)
        out = []
        for member in self.members:
            emb = member.embed(spec)
            out.append((member.classify(emb), emb))
        return out

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = self.member_outputs(wave)
        logits = log_mean_softmax([logits for logits, _ in outs])
        emb = ensemble_embedding([e for _, e in outs])
        if self.open_set is not None:
            logits = self.open_set(logits, emb)
        return logits, emb

    @property
    def embed_dim(self) -> int:
        return sum(m.embed_dim for m in self.members)


@dataclass(frozen=True)
class ClassGate:
    """Which top names a window's sound, by its noise floor: ``w = sigmoid((share - share_at) / width)``
    (1: the clean tops, 0: the room tops), where ``share`` is the part of the window's log-mel bins more
    than ``below_db`` under its peak, counted over the frames that are not digital silence. A steady floor
    close under the sound (a quiet room's hiss under an event) leaves few bins that far down: the room
    tops, adapted to sounds over a floor, name it; an isolated clip, or sound over speech or music, keeps
    the clean tops' name. Comparisons, sums and a sigmoid: the same in every exported graph."""

    below_db: float = 50.0
    share_at: float = 0.02
    width: float = 0.005

    def share(self, spec: torch.Tensor, top_db: float) -> torch.Tensor:
        """(batch,) share of the bins of non-silent frames more than ``below_db`` under the peak."""
        active = (torch.amax(spec, dim=1, keepdim=True) > 0.1 - top_db).to(spec.dtype)  # (batch, 1, frames)
        below = (spec < -self.below_db).to(spec.dtype) * active
        return below.sum(dim=(1, 2)) / torch.clamp(active.sum(dim=(1, 2)) * spec.shape[1], min=1.0)

    def __call__(self, spec: torch.Tensor, top_db: float) -> torch.Tensor:
        """(batch, 1) weight of the clean tops' names."""
        return torch.sigmoid((self.share(spec, top_db) - self.share_at) / self.width).unsqueeze(1)

    def to_dict(self) -> dict:
        return {"below_db": self.below_db, "share_at": self.share_at, "width": self.width}


class RoomTop(nn.Module):
    """A second top for one network: its own copy of the backbone's last stage (EfficientNet's last
    MBConv block, head convolution and BatchNorm), fine-tuned for real rooms by ``soundwatch adapt``,
    and its own classifier over the events plus ``background``. It reads the network's trunk."""

    def __init__(self, member: SoundCLR, n_classes: int):
        super().__init__()
        net = getattr(member.backbone, "net", None)
        if net is None or not hasattr(net, "_blocks"):
            raise ValueError(f"a room top needs an EfficientNet backbone, not {member.arch}")
        self.block = copy.deepcopy(net._blocks[-1])
        self.conv_head = copy.deepcopy(net._conv_head)
        self.bn1 = copy.deepcopy(net._bn1)
        self.act = net._swish
        self.classifier = nn.Linear(member.embed_dim, n_classes)
        self.log_logit_scale = nn.Parameter(torch.zeros(()))

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's feature map -> (logits over events + background, unit embedding)."""
        x = self.block(feature_map, drop_connect_rate=0.0)
        emb = nn.functional.normalize(self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3)), dim=1)
        return self.classifier(emb) * self.log_logit_scale.exp(), emb


class TwoTopEnsemble(nn.Module):
    """An ensemble whose networks each carry two tops over one trunk: the clean top (trained on
    isolated clips: it names the sound) and a room top (adapted to events over speech, music and room
    tone, with a ``background`` class and the open-set gate: it says whether any event is there).

    ``forward(wave)`` returns ``(log p, embedding)`` over the events plus ``background``:
    ``p(background)`` is the room tops' (after the gate), and the event probability ``1 - p(background)``
    is shared among the events by ``q = softmax(w * log p_clean + (1 - w) * log p_room_events)``, where
    ``w = class_weight`` (1: the clean tops name the sound, so the closed-set prediction over the events
    is the clean ensemble's). The embedding is the room tops' (what the gate compares to prototypes).
    The trunk runs once per network, so the second top costs one more last stage per network.
    ``members`` may be 1: one network with its two tops over its one trunk.
    With a ``class_gate`` (``ClassGate``), ``w`` is chosen per window by its noise floor instead.
    """

    def __init__(
        self,
        arch: str,
        n_events: int,
        frontend: FrontendConfig = FrontendConfig(),
        members: int = 2,
        class_weight: float = 1.0,
        proj_dim: int = PROJ_DIM,
        class_gate: ClassGate | None = None,
    ):
        super().__init__()
        if not 0.0 <= class_weight <= 1.0:
            raise ValueError(f"class_weight must be in [0, 1], not {class_weight}")
        self.arch = arch
        self.clean = SoundCLREnsemble(arch, n_events, frontend, members, proj_dim, projector=False)
        self.rooms = nn.ModuleList(RoomTop(m, n_events + 1) for m in self.clean.members)
        self.class_weight = float(class_weight)
        self.class_gate = class_gate
        self.open_set: OpenSet | None = None

    @property
    def frontend(self) -> LogMel:
        return self.clean.frontend

    @property
    def embed_dim(self) -> int:
        return self.clean.embed_dim

    def tops(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean log p over the events, room log p over events + background after the gate, room embedding)."""
        return self._tops(self.frontend(wave))

    def _tops(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = spec_to_image(spec)
        clean, room, embs = [], [], []
        for member, room_top in zip(self.clean.members, self.rooms):
            fmap = member.backbone.trunk(image)
            clean.append(member.classify(nn.functional.normalize(member.backbone.top(fmap), dim=1)))
            logits, emb = room_top(fmap)
            room.append(logits)
            embs.append(emb)
        emb = ensemble_embedding(embs)
        room_logp = log_mean_softmax(room)
        if self.open_set is not None:
            room_logp = self.open_set(room_logp, emb)
        return log_mean_softmax(clean), room_logp, emb

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.frontend(wave)
        clean, room, emb = self._tops(spec)
        events, background = room[:, :-1], room[:, -1:]
        if self.class_gate is not None:
            w = self.class_gate(spec, self.frontend.config.top_db)
            names = nn.functional.log_softmax(w * clean + (1.0 - w) * events, dim=1)
        elif self.class_weight == 1.0:
            names = clean
        else:
            w = self.class_weight
            names = nn.functional.log_softmax(w * clean + (1.0 - w) * events, dim=1)
        return torch.cat([names + torch.logsumexp(events, dim=1, keepdim=True), background], dim=1), emb
