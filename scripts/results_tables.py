#!/usr/bin/env python
"""Markdown tables for docs/results.md from a training run's fold directory.

    python scripts/results_tables.py runs/esc50-hybrid-v2-fold1/fold1 [--every 1]
    python scripts/results_tables.py --eval eval.json     # the output of `soundwatch eval`
    python scripts/results_tables.py --eval eval.json --plot confusion.png --title "..."

Prints the per-class accuracy (lowest first), the most frequent confusions and the
per-epoch log (``--every N``: every N-th epoch and the last). Reads ``per_class.json``
and ``metrics.jsonl``, which the trainer writes, or with ``--eval`` the JSON of
``soundwatch eval`` (the first backend's result when it scored several).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def per_class_table(per_class: dict[str, float], columns: int = 5) -> str:
    items = sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    head = "| " + " | ".join(["class | acc"] * columns) + " |"
    lines = [head, "| " + " | ".join(["--- | ---"] * columns) + " |"]
    for i in range(0, len(items), columns):
        cells = [f"{name} | {acc:.0%}" for name, acc in items[i : i + columns]]
        cells += ["|"] * (columns - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusions(cm: list[list[int]], classes: list[str], top: int = 10) -> str:
    pairs = [(cm[i][j], classes[i], classes[j]) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i][j]]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    per = sum(cm[0])
    return (
        f"Most frequent confusions (true -> predicted, clips of {per}): "
        + "; ".join(f"{t} -> {p} ({n})" for n, t, p in pairs[:top])
        + "."
    )


def epoch_table(rows: list[dict], every: int) -> str:
    has_val = any("val_acc" in r for r in rows)
    head = ["epoch", "lr", "train loss (CE / SupCon)", "train acc"]
    head += ["val acc"] if has_val else []
    head += ["fold acc (logged only)", "epoch s"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    for r in rows:
        if r["epoch"] % every and r is not rows[-1]:
            continue
        parts = (
            f"{r['train_loss']:.3f} ({r.get('train_ce', float('nan')):.3f} / {r.get('train_supcon', float('nan')):.3f})"
        )
        cells = [str(r["epoch"]), f"{r['lr']:.2e}", parts, f"{r['train_acc']:.1%}"]
        cells += [f"{r['val_acc']:.1%}" if "val_acc" in r else "-"] if has_val else []
        cells += [f"{r['test_acc']:.1%}", f"{r['epoch_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_dir", type=Path, nargs="?")
    parser.add_argument("--every", type=int, default=1, help="print every N-th epoch (and the last)")
    parser.add_argument("--eval", type=Path, help="a `soundwatch eval` JSON instead of a run's fold directory")
    parser.add_argument("--plot", type=Path, help="also draw the confusion matrix into this PNG")
    parser.add_argument("--title", default="", help="the plot's title")
    args = parser.parse_args()
    if args.eval:
        data = json.loads(args.eval.read_text())
        data = data["results"][0] if "results" in data else data
    elif args.fold_dir:
        data = json.loads((args.fold_dir / "per_class.json").read_text())
    else:
        parser.error("give a fold directory or --eval FILE")
    classes = list(data["per_class_accuracy"])
    print(per_class_table(data["per_class_accuracy"]), end="\n\n")
    print(confusions(data["confusion"], classes), end="\n\n")
    if args.plot:
        import numpy as np

        from soundwatch.train.report import plot_confusion

        plot_confusion(np.asarray(data["confusion"]), classes, args.plot, args.title)
    if args.eval:
        return
    rows = [json.loads(line) for line in (args.fold_dir / "metrics.jsonl").read_text().splitlines()]
    print(epoch_table(rows, args.every))


if __name__ == "__main__":
    main()
