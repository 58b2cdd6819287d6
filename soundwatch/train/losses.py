"""SoundCLR's losses: supervised contrastive (Khosla et al. 2020), cross-entropy, and their mix.

``supcon_loss`` is the single-view form SoundCLR uses: each clip in the batch is an
anchor; its positives are the other clips of its class, and its denominator runs over
every other clip. For anchor i with positives P(i) (anchors without positives are left
out of the mean):

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T) )

``hybrid = alpha * SupCon + (1 - alpha) * CE``.
"""

from __future__ import annotations

import torch
from torch import nn


def supcon_loss(proj: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean SupCon loss of unit-norm projections ``proj`` (batch, dim) with integer ``labels``."""
    n = proj.shape[0]
    sim = proj @ proj.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=proj.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return proj.sum() * 0.0
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()


def training_loss(
    kind: str,
    logits: torch.Tensor,
    proj: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    mixed: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise for ``kind`` (ce | supcon | hybrid) and its parts, for the log.

    ``mixed`` = ``(other_labels, lam)`` for a mixup batch (``lam * x + (1 - lam) * x[perm]``,
    ``lam >= 0.5``): cross-entropy is ``lam * CE(labels) + (1 - lam) * CE(other_labels)``;
    SupCon keeps ``labels``, the dominant clip's class.
    """
    parts: dict[str, torch.Tensor] = {}
    if kind in ("ce", "hybrid"):
        parts["ce"] = nn.functional.cross_entropy(logits, labels)
        if mixed is not None:
            other, lam = mixed
            parts["ce"] = lam * parts["ce"] + (1 - lam) * nn.functional.cross_entropy(logits, other)
    if kind in ("supcon", "hybrid"):
        parts["supcon"] = supcon_loss(proj, labels, temperature)
    if kind == "ce":
        total = parts["ce"]
    elif kind == "supcon":
        total = parts["supcon"]
    elif kind == "hybrid":
        total = alpha * parts["supcon"] + (1 - alpha) * parts["ce"]
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return total, {k: float(v.detach()) for k, v in parts.items()}
