#!/usr/bin/env python
"""Write one network of an ensemble model as a model of its own: its clean 50-class top, no room tops or gate.

    python scripts/extract_member.py soundwatch/assets/soundclr-esc50-effl0.safetensors 0 runs/member0/model.safetensors

For comparisons of one network against one network (a new training recipe against one member of the
shipped ensemble, same seed and recipe otherwise). The card keeps the member's own record from the
ensemble's card (source file, seed, commit) under `extracted`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soundwatch.errors import CheckpointError
from soundwatch.labels import BACKGROUND_LABEL
from soundwatch.models.card import ModelCard
from soundwatch.models.checkpoint import load_checkpoint, save_checkpoint
from soundwatch.models.soundclr import SoundCLREnsemble, TwoTopEnsemble


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="an ensemble model (.safetensors)")
    ap.add_argument("member", type=int, help="which network, from 0")
    ap.add_argument("out", type=Path, help="the one-network model to write (.safetensors)")
    args = ap.parse_args()
    try:
        model, card = load_checkpoint(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensemble = model.clean if isinstance(model, TwoTopEnsemble) else model
    if not isinstance(ensemble, SoundCLREnsemble) or not 0 <= args.member < len(ensemble.members):
        print(f"error: {args.model} has no member {args.member}", file=sys.stderr)
        return 2
    classes = [c for c in card.classes if c != BACKGROUND_LABEL]
    keep = ("data", "folds", "license", "hardware")
    extra = {k: v for k, v in card.extra.items() if k in keep}
    members = card.extra.get("ensemble", {}).get("members", [])
    extra["extracted"] = {
        "from": str(args.model),
        "member": args.member,
        "weights_sha256_of_source": card.extra.get("weights_sha256"),
        **(members[args.member] if args.member < len(members) else {}),
    }
    one = ModelCard(card.arch, classes, card.sample_rate, card.window_s, card.frontend, card.proj_dim, 1, False, extra)
    save_checkpoint(args.out, ensemble.members[args.member], one)
    print(f"wrote {args.out} (member {args.member} of {args.model}, {len(classes)} classes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
