"""Per-class detection thresholds for a target precision, chosen on held-in clips.

``soundwatch calibrate thresholds CHECKPOINT --data-dir DIR --folds 2-5`` scores every clip
of the given folds (the training folds: never the held-out test fold), and for each label
picks the lowest threshold (not under ``floor``: the open world is noisier than a closed
dataset) whose one-vs-rest precision on those clips reaches the target;
a label that cannot reach it keeps the highest score seen plus a margin (it will rarely
fire) and is flagged. The result, ``calibration/thresholds.json``, is what ``listen
--thresholds`` (or ``[detect] thresholds_file``) reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from soundwatch.engines.base import softmax


def threshold_for_precision(scores: np.ndarray, positive: np.ndarray, target: float,
                            floor: float = 0.2) -> tuple[float, float, float, bool]:
    """(threshold, precision, recall, reached) for one label's scores on labelled clips."""
    order = np.argsort(-scores)
    s, pos = scores[order], positive[order]
    tp = np.cumsum(pos)
    precision = tp / np.arange(1, len(s) + 1)
    n_pos = max(1, int(pos.sum()))
    # Candidate cut-offs at every distinct score: keep those whose precision holds the target,
    # and take the one admitting the most clips (the lowest threshold, best recall).
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(last_of_value & (precision >= target) & (s >= floor))
    if len(ok) == 0:
        return float(min(1.0, s[0] + 1e-3)), 0.0, 0.0, False
    k = ok[-1]
    return float(s[k]), float(precision[k]), float(tp[k] / n_pos), True


def calibrate(engine, clips, folds: list[int], target: float, floor: float = 0.2, batch: int = 16) -> dict:
    from soundwatch.train.commands import center_fit

    idx = clips.indices(folds)
    probs = np.concatenate([
        softmax(np.asarray(engine.infer(center_fit(np.asarray(clips.waves[idx[i:i + batch]], np.float32),
                                                   engine.window_samples))))
        for i in range(0, len(idx), batch)
    ])
    labels = clips.labels[idx]
    table, details, unreached = {}, {}, []
    for c, name in enumerate(clips.classes):
        thr, prec, rec, reached = threshold_for_precision(probs[:, c], labels == c, target, floor)
        table[name] = round(thr, 4)
        details[name] = {"precision": round(prec, 4), "recall": round(rec, 4), "reached": reached}
        if not reached:
            unreached.append(name)
    return {"target_precision": target, "min_threshold": floor, "folds": folds, "n_clips": int(len(idx)), "thresholds": table,
            "details": details, "unreached": unreached}


def write_thresholds(result: dict, checkpoint: Path, out: Path) -> Path:
    from soundwatch.models.checkpoint import file_sha256

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": Path(checkpoint).name, "checkpoint_sha256": file_sha256(checkpoint),
                               **result}, indent=1) + "\n")
    return out
