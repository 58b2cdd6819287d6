#!/usr/bin/env python
"""Compare two `soundwatch eval` results clip by clip: accuracies, the 2x2 table, exact McNemar p.

    python scripts/compare_evals.py A.json B.json --meta ../shared/data/esc50-16k/meta/esc50.csv

Each JSON is the output of `soundwatch eval` (its first backend's result when it scored
several). Clips are paired by file name; the true class comes from the dataset's metadata
CSV (``filename`` and ``category`` columns). The exact two-sided McNemar test asks whether
the clips only A gets right and the clips only B gets right could be a fair coin's split.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from math import comb
from pathlib import Path


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of min(b, c) out of b + c at 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def predictions(path: Path) -> dict[str, str]:
    data = json.loads(Path(path).read_text())
    result = data["results"][0] if "results" in data else data
    return result["predictions"]


def truth(meta: Path) -> dict[str, str]:
    with open(meta, newline="") as f:
        return {Path(row["filename"]).stem: row["category"] for row in csv.DictReader(f)}


def compare(a: dict[str, str], b: dict[str, str], labels: dict[str, str]) -> dict:
    if set(a) != set(b):
        raise ValueError(f"the two results score different clips ({len(set(a) ^ set(b))} not in both)")
    missing = sorted(set(a) - set(labels))
    if missing:
        raise ValueError(f"{len(missing)} clips are not in the metadata, e.g. {missing[0]}")
    right_a = {k for k in a if a[k] == labels[k]}
    right_b = {k for k in b if b[k] == labels[k]}
    only_a, only_b = len(right_a - right_b), len(right_b - right_a)
    return {
        "clips": len(a),
        "acc_a": len(right_a) / len(a),
        "acc_b": len(right_b) / len(a),
        "both_right": len(right_a & right_b),
        "only_a": only_a,
        "only_b": only_b,
        "both_wrong": len(a) - len(right_a | right_b),
        "same_prediction": sum(a[k] == b[k] for k in a) / len(a),
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--meta", type=Path, required=True, help="the dataset's metadata CSV")
    args = parser.parse_args(argv)
    try:
        out = compare(predictions(args.a), predictions(args.b), truth(args.meta))
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"clips {out['clips']}: A {out['acc_a']:.2%}, B {out['acc_b']:.2%}; both right {out['both_right']}, "
        f"only A {out['only_a']}, only B {out['only_b']}, both wrong {out['both_wrong']}; "
        f"same prediction {out['same_prediction']:.2%}; exact McNemar p = {out['mcnemar_p']:.3f}"
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
