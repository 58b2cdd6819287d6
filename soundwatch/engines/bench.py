"""``soundwatch bench``: latency and throughput of each backend, against torch eager in the same run.

A backend is named ``backend[-precision]`` (``torch``, ``onnx``, ``onnx-fp16``,
``onnx-int8``, ``tensorrt``, ``tensorrt-int8``, ...); torch and onnx default to fp32,
tensorrt to fp16. Each is timed on random waveform windows (the work does not depend
on the audio) after warm-up calls. The real-time factor is the processing time per
window divided by the daemon's hop (a new window every ``hop_s`` seconds): below 1
the daemon keeps up with live audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.engines import create_engine
from soundwatch.engines.base import Engine
from soundwatch.errors import UserError

DEFAULT_PRECISION = {"torch": "fp32", "onnx": "fp32", "tensorrt": "fp16"}
REFERENCE = "torch"
HOP_S = 1.0  # config.toml listen.hop_s default


@dataclass
class Result:
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p99_ms: float
    windows_per_s: float
    rtf: float  # processing time per window / hop
    vs_torch: float | None = None  # torch eager p50 / this p50 at the same batch


def parse_spec(spec: str) -> tuple[str, str]:
    """``"onnx-int8"`` -> ``("onnx", "int8")``; ``"tensorrt"`` -> ``("tensorrt", "fp16")``."""
    backend, _, precision = spec.strip().partition("-")
    if backend not in DEFAULT_PRECISION:
        raise UserError(
            f"unknown bench backend {spec!r}; use torch, onnx, tensorrt with an optional -fp32/-fp16/-int8 suffix"
        )
    return backend, precision or DEFAULT_PRECISION[backend]


def engine_options(backend: str, precision: str, threads: int, compute: str, engines_dir: Path | None) -> dict:
    """Constructor options (every backend takes the same, soundwatch.engines.base.Engine)."""
    return {
        "precision": precision,
        "threads": threads,
        "engines_dir": engines_dir,
        "compute": compute if backend == "torch" else "auto",
    }


def random_windows(batch: int, window_samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, window_samples)) * 0.1).astype(np.float32)


def time_calls(engine: Engine, waves: np.ndarray, calls: int) -> list[float]:
    """Seconds taken by each of ``calls`` ``infer`` calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.infer(waves)
        times.append(time.perf_counter() - start)
    return times


def summarise(backend: str, precision: str, batch: int, times: list[float]) -> Result:
    p50 = float(np.percentile(times, 50))
    return Result(
        backend, precision, batch, p50 * 1e3, float(np.percentile(times, 99)) * 1e3, batch / p50, p50 / batch / HOP_S
    )


def run_bench(
    checkpoint: Path,
    specs: list[str],
    batches: list[int],
    threads: int = 1,
    repeats: int = 50,
    warmup: int = 5,
    compute: str = "auto",
    engines_dir: Path | None = None,
    rounds: int = 5,
) -> tuple[list[Result], list[str]]:
    """Time every backend at every batch size; torch eager fp32 is always measured as the reference.

    The backends take turns, ``rounds`` times (``repeats`` calls each in all), so a change
    in machine load falls on all of them alike. Returns the results and a note for each
    backend that could not run here (and why).
    """
    parsed = [parse_spec(s) for s in specs]
    if (REFERENCE, "fp32") not in parsed:
        parsed.insert(0, (REFERENCE, "fp32"))
    engines: dict[tuple[str, str], Engine] = {}
    skipped = []
    for backend, precision in dict.fromkeys(parsed):
        try:
            engines[backend, precision] = create_engine(
                backend, checkpoint, **engine_options(backend, precision, threads, compute, engines_dir)
            )
        except UserError as exc:
            skipped.append(f"{backend}-{precision}: {exc}")
    if not engines:
        raise UserError(f"no backend could load {checkpoint}: " + "; ".join(skipped))
    results = []
    for batch in batches:
        waves = random_windows(batch, next(iter(engines.values())).window_samples)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in engines}
        for engine in engines.values():
            time_calls(engine, waves, warmup)
        for turn in range(rounds):
            calls = repeats // rounds + (turn < repeats % rounds)
            for key, engine in engines.items():
                times[key] += time_calls(engine, waves, calls)
        results += [summarise(*key, batch, times[key]) for key in engines]
    reference = {r.batch: r.p50_ms for r in results if (r.backend, r.precision) == (REFERENCE, "fp32")}
    for r in results:  # no ratio where the reference could not run (skipped: no CUDA, say)
        r.vs_torch = reference[r.batch] / r.p50_ms if r.batch in reference else None
    return results, skipped


HEADER = ["backend", "precision", "batch", "p50 ms", "p99 ms", "windows/s", "RTF", "x torch eager"]


def rows(results: list[Result]) -> list[list[str]]:
    return [
        [
            r.backend,
            r.precision,
            str(r.batch),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.windows_per_s:.1f}",
            f"{r.rtf:.4f}",
            f"{r.vs_torch:.2f}" if r.vs_torch else "-",
        ]
        for r in results
    ]


def markdown(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)
