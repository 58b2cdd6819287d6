#!/usr/bin/env python
"""Make trained checkpoints the package's default model: fp16 weights, card kept, a `shipped` note added.

    python scripts/ship_model.py runs/esc50-hybrid-v2-fold1/fold1/best.safetensors \
        --status "default model: 86.0% on ESC-50 fold 1 (docs/results.md)"

    python scripts/ship_model.py runs/a/fold1/best.safetensors runs/b/fold1/best.safetensors \
        --status "..."            # two or more: one ensemble model (mean of their probabilities)

    python scripts/ship_model.py soundwatch/assets/soundclr-esc50-effl0.safetensors \
        --room-tops runs/adapt-v1/adapted.safetensors --class-weight 1 --status "..."
                                  # a model (one network or an ensemble) and what `soundwatch adapt`
                                  # made of it: one model with two tops over each trunk (clean tops
                                  # name the sound, room tops and the open-set gate say whether there
                                  # is one)

Writes soundwatch/assets/soundclr-esc50-effl0.safetensors (and its .json card). The
weights are stored as float16 and run in float32; evaluate the shipped file itself
(`soundwatch eval`), not the fp32 source. Several checkpoints must agree on everything
their inputs and outputs depend on (architecture, classes, rate, window, frontend) and on
the data split; the ensemble stores no projection heads (training-only), and its card lists
each member's source, seed, commit and training time. INT8 calibration ranges are keyed
to the file's hash: re-run `soundwatch calibrate int8` after shipping.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

from soundwatch.errors import CheckpointError
from soundwatch.models.checkpoint import (
    DEFAULT_MODEL,
    ModelCard,
    build_model,
    card_path,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)

MAX_BYTES = 25 * 1024 * 1024
SAME = ("arch", "classes", "sample_rate", "window_s", "frontend", "proj_dim", "folds", "data")


def ensemble(checkpoints: list[Path]) -> tuple[torch.nn.Module, ModelCard]:
    """One ensemble network and card from several single-network checkpoints."""
    loaded = [load_checkpoint(path) for path in checkpoints]
    first = loaded[0][1].to_dict()
    for path, (_, card) in zip(checkpoints[1:], loaded[1:]):
        if card.members != 1:
            raise CheckpointError(f"{path} is already {card.describe()}; give single-network checkpoints")
        found = card.to_dict()
        for key in SAME:
            if found.get(key) != first.get(key):
                raise CheckpointError(
                    f"{path}: {key} is {found.get(key)!r}, but {checkpoints[0]} has "
                    f"{first.get(key)!r}; ensemble members must match"
                )
    base = loaded[0][1]
    card = ModelCard(
        arch=base.arch,
        classes=base.classes,
        sample_rate=base.sample_rate,
        window_s=base.window_s,
        frontend=base.frontend,
        proj_dim=base.proj_dim,
        members=len(loaded),
        projector=False,
        extra=copy.deepcopy(base.extra),
    )
    model = build_model(card)
    for target, (source, _) in zip(model.members, loaded):
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("projector.")}
        target.load_state_dict(state, strict=True)
    members = []
    for path, (_, member) in zip(checkpoints, loaded):
        training = member.extra.get("training", {})
        members.append(
            {
                "from": str(path),
                "source_sha256": file_sha256(path),
                "seed": training.get("seed"),
                "commit": training.get("commit"),
                "training_wall_s": member.extra.get("training_wall_s"),
                "test_acc_logged": member.extra.get("metrics", {}).get("test_acc"),
            }
        )
    training = card.extra.setdefault("training", {})
    training["seed"] = [m["seed"] for m in members]
    training["commit"] = [m["commit"] for m in members]
    card.extra["training_wall_s"] = round(sum(m["training_wall_s"] or 0.0 for m in members), 1)
    card.extra["metrics"] = {"chosen_by": base.extra.get("metrics", {}).get("chosen_by"), "test_acc": None}
    card.extra["ensemble"] = {
        "combine": "mean of the members' softmax probabilities (logits out: its log)",
        "members": members,
    }
    return model, card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help="trained checkpoint(s) (.safetensors with its card); several make an ensemble",
    )
    parser.add_argument(
        "--room-tops",
        type=Path,
        help="adapt's output for the one checkpoint (a network or an ensemble): ship both tops over the shared trunks",
    )
    parser.add_argument(
        "--class-weight",
        type=float,
        default=1.0,
        help="with --room-tops: share of the clean tops in naming the sound (1: theirs alone; 0: the room tops')",
    )
    parser.add_argument(
        "--class-gate",
        metavar="SHARE_AT",
        type=float,
        help="for a two-top model: name each window with the room tops where under this share of its log-mel bins "
        "lies 50 dB under its peak (a steady floor close under the sound), else with the clean tops (ClassGate)",
    )
    parser.add_argument("--status", required=True, help="one line for the card: what this model is and how good")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL, help=f"destination (default {DEFAULT_MODEL})")
    args = parser.parse_args(argv)

    try:
        if args.room_tops:
            if len(args.checkpoint) != 1:
                raise CheckpointError("--room-tops goes with one checkpoint: the clean model it was adapted from")
            from soundwatch.train.adapt import combine_tops

            model, card = combine_tops(
                *load_checkpoint(args.checkpoint[0]), *load_checkpoint(args.room_tops), args.class_weight
            )
            source = {
                "from": str(args.checkpoint[0]),
                "source_sha256": file_sha256(args.checkpoint[0]),
                "room_tops_from": str(args.room_tops),
                "room_tops_sha256": file_sha256(args.room_tops),
            }
        elif len(args.checkpoint) == 1:
            model, card = load_checkpoint(args.checkpoint[0])
            source = {"from": str(args.checkpoint[0]), "source_sha256": file_sha256(args.checkpoint[0])}
        else:
            model, card = ensemble(args.checkpoint)
            source = {"from": [str(p) for p in args.checkpoint]}
        if args.class_gate is not None:
            if "two_tops" not in card.extra:
                raise CheckpointError("--class-gate goes with a two-top model (--room-tops, or a checkpoint made so)")
            from soundwatch.models.soundclr import ClassGate

            model.class_gate = ClassGate(share_at=args.class_gate)
            card.extra["two_tops"] = {**card.extra["two_tops"], "class_gate": model.class_gate.to_dict()}
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    card.extra["shipped"] = {"status": args.status, **source, "dtype": "float16"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as staging:  # the current default stays until it fits
        staged = save_checkpoint(Path(staging) / args.out.name, model, card, dtype=torch.float16)
        size = staged.stat().st_size
        if size > MAX_BYTES:
            print(
                f"error: {args.out} would be {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit; "
                "nothing was replaced",
                file=sys.stderr,
            )
            return 1
        staged.replace(args.out)
        card_path(staged).replace(card_path(args.out))
    print(f"{args.out}: {card.describe()}, {size / 2**20:.1f} MiB, sha256 {file_sha256(args.out)[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
