"""Per-window cost of a two-top model of one network against the shipped two-network one (issue 11).

The shipped default is two networks, each with a clean and a room top. ``ship_model.py --room-tops`` also
takes one network (commit 1c8585c); this measures what that saves. Three models, all on ONNX Runtime with
one thread at batch 1, timed in turns (``--rounds`` rounds of ``--repeats`` calls each, so a change in the
machine's load falls on all of them alike):

- the shipped default (the reference);
- one network with its two tops: the default's network 0, its room top 0 and an open-set gate over that
  network's embedding (the cost does not depend on the weights; its outputs are not evaluated here);
- the default's network 0 alone, clean top only (what ``adapt`` would start from: ``adaptable``).

    python bench/bench_two_tops.py --rounds 10 --repeats 30
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
from pathlib import Path

import onnxruntime
import torch

from soundwatch.engines import create_engine
from soundwatch.engines.bench import random_windows, time_calls
from soundwatch.models.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from soundwatch.models.soundclr import OpenSet, TwoTopEnsemble
from soundwatch.train.adapt import adaptable

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench" / "two-tops"


def one_network_models(default: Path) -> tuple[Path, Path]:
    """(one network with two tops, one network clean) made from the default's network 0, saved under CACHE."""
    model, card = load_checkpoint(default)
    if not isinstance(model, TwoTopEnsemble):
        raise SystemExit(f"error: {default} is not a two-top model")
    CACHE.mkdir(parents=True, exist_ok=True)
    one = TwoTopEnsemble(card.arch, len(card.classes) - 1, card.frontend_config, 1, model.class_weight)
    one.clean.members[0].load_state_dict(model.clean.members[0].state_dict())
    one.rooms[0].load_state_dict(model.rooms[0].state_dict())
    n_events, dim = len(card.classes) - 1, one.embed_dim
    one.open_set = OpenSet(n_events, dim, model.open_set.tau, model.open_set.sharpness)
    one.open_set.prototypes.copy_(torch.nn.functional.normalize(model.open_set.prototypes[:, :dim], dim=1))
    one_card = copy.deepcopy(card)
    one_card.members = 1
    two_tops = save_checkpoint(CACHE / "one-network-two-tops.safetensors", one.eval(), one_card)
    clean = save_checkpoint(CACHE / "one-network-clean.safetensors", *adaptable(one, one_card))
    return two_tops, clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="calls per model per round")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    default = resolve_model(None)
    one_two_tops, one_clean = one_network_models(default)
    rows = [
        ("the shipped default: 2 networks, two tops each (reference)", default),
        ("1 network, two tops", one_two_tops),
        ("1 network, clean top only", one_clean),
    ]
    engines = [create_engine("onnx", path, threads=1, engines_dir=CACHE / "engines") for _, path in rows]
    waves = random_windows(1, engines[0].window_samples)
    for engine in engines:
        time_calls(engine, waves, 5)  # warm-up
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(args.rounds):
        for engine, got in zip(engines, times):
            got.extend(time_calls(engine, waves, args.repeats))
    ref = statistics.median(times[0])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(
        f"ONNX Runtime {onnxruntime.__version__}, 1 thread, batch 1; {args.rounds} rounds x {args.repeats} calls; "
        f"commit {commit.strip()}; {platform.processor() or platform.machine()}\n"
    )
    print("| model | p50 ms per window | p90 ms | vs the default |")
    print("|---|---|---|---|")
    for (name, _), got in zip(rows, times):
        p50 = statistics.median(got)
        p90 = statistics.quantiles(got, n=10)[-1]
        print(f"| {name} | {p50 * 1e3:.1f} | {p90 * 1e3:.1f} | {p50 / ref:.2f} |")


if __name__ == "__main__":
    main()
