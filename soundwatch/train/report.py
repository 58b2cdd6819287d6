"""What a training run leaves for people: confusion matrix PNG, per-class accuracy, Markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(targets, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def per_class_accuracy(cm: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """Accuracy of each class (None for a class absent from the data)."""
    totals = cm.sum(axis=1)
    return {c: (float(cm[i, i] / totals[i]) if totals[i] else None) for i, c in enumerate(classes)}


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(6.0, 0.22 * n + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=max(4, 10 - n // 10))
    ax.set_yticks(range(n), classes, fontsize=max(4, 10 - n // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_fold_outputs(out_dir: Path, classes: list[str], targets, preds, title: str) -> dict[str, float | None]:
    """confusion.png and per_class.json in ``out_dir``; returns the per-class accuracy."""
    cm = confusion_matrix(np.asarray(targets), np.asarray(preds), len(classes))
    plot_confusion(cm, classes, Path(out_dir) / "confusion.png", title)
    per_class = per_class_accuracy(cm, classes)
    (Path(out_dir) / "per_class.json").write_text(
        json.dumps({"per_class_accuracy": per_class, "confusion": cm.tolist()}, indent=1) + "\n"
    )
    return per_class


def fold_table(rows: list[dict], protocol: str, val_fraction: float = 0.125) -> str:
    """Markdown: one row per fold, then mean +- std of the test accuracy."""
    label = (
        "paper protocol: checkpoint chosen on the test fold (optimistic)"
        if protocol == "paper"
        else "cross-validation: every fold's final epoch, fixed before training (no validation split)"
        if val_fraction <= 0
        else "cross-validation: checkpoint chosen on a validation split of the training folds"
    )
    lines = [
        f"Protocol: {label}.",
        "",
        "| test fold | best epoch | val acc | test acc | epochs | wall time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        val = f"{r['val_acc']:.2%}" if r.get("val_acc") is not None else "-"
        lines.append(
            f"| {r['fold']} | {r['best_epoch']} | {val} | {r['test_acc']:.2%} | {r['epochs_done']} | "
            f"{r['wall_s'] / 60:.1f} min |"
        )
    accs = np.array([r["test_acc"] for r in rows])
    if len(accs):
        lines += [
            "",
            f"**Test accuracy: {accs.mean():.2%} +- {accs.std():.2%}** (mean +- std over {len(accs)} "
            f"fold{'s' if len(accs) > 1 else ''})",
        ]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> dict:
    accs = np.array([r["test_acc"] for r in rows])
    return {
        "folds": [r["fold"] for r in rows],
        "test_acc_mean": float(accs.mean()) if len(accs) else None,
        "test_acc_std": float(accs.std()) if len(accs) else None,
    }
