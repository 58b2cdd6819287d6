"""``soundwatch export``, ``calibrate int8``, ``build-engine`` and ``bench``.

Heavy modules (torch, onnx, onnxruntime, tensorrt) are imported inside the commands,
so ``soundwatch --help`` and the other commands start without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

CHECKPOINT_ARG = typer.Argument(None, help="checkpoint (.safetensors); default: the shipped model")
ENGINES_OPT = typer.Option(None, "--engines-dir", help="cache for built engines (default: engines/)")


def _int_list(text: str, what: str) -> list[int]:
    from soundwatch.errors import UserError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{what} must be a comma list of positive integers, not {text!r}")
    return values


def _check_replaceable_graph(out: Path) -> None:
    """An existing ``export --out`` is replaced only when it is a graph soundwatch exported (its metadata
    says so); anything else (the checkpoint itself, a recording, someone's own ONNX model) is refused, intact."""
    from soundwatch.engines.graphs import META_SHA, graph_metadata
    from soundwatch.errors import UserError

    if out.suffix.lower() != ".onnx":
        raise UserError(
            f"--out {out}: already exists and is not an .onnx file (the model itself? a recording?), so it is "
            "not overwritten: name the graph FILE.onnx"
        )
    if not out.is_file() or META_SHA not in graph_metadata(out):
        raise UserError(
            f"--out {out}: already exists and is not a graph soundwatch exported (another ONNX model?), so it is "
            "not overwritten: choose another path, or remove it first"
        )


def export(
    checkpoint: Optional[Path] = CHECKPOINT_ARG,
    out: Optional[Path] = typer.Option(None, "--out", help="ONNX file to write (default: cached under engines/)"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (backbone only; frontend stays fp32)"),
    force: bool = typer.Option(False, "--force", help="export again even if a current cached export exists"),
    engines_dir: Optional[Path] = ENGINES_OPT,
) -> None:
    """Export a checkpoint to ONNX: waveform window in, logits and embedding out, log-mel inside."""
    from soundwatch.engines.graphs import check_precision
    from soundwatch.errors import check_output_file
    from soundwatch.models.card import read_card, resolve_model

    check_precision(precision)  # before torch and the exporter load: a refusal is immediate
    checkpoint = resolve_model(checkpoint)
    read_card(checkpoint)  # a file that is no model
    if out is not None:
        check_output_file("--out", out, make_parents=True)
        if out.exists() or out.is_symlink():
            _check_replaceable_graph(out)
    from soundwatch.engines.export import export_onnx

    print(export_onnx(checkpoint, out, precision, engines_dir, force))


calibrate_app = typer.Typer(
    help="Calibration: INT8 quantization, per-class detection thresholds.", no_args_is_help=True
)


CHECKOUT = Path(__file__).resolve().parents[2]  # a development checkout: where its data and manifests live
DEFAULT_MANIFEST = CHECKOUT / "calibration" / "esc50-train-folds-int8.json"
ESC50_ENV = "SOUNDWATCH_ESC50"
DEFAULT_ESC50 = CHECKOUT.parent / "shared" / "data" / "esc50-16k"


def esc50_dir(data: Path | None = None) -> Path:
    """The ESC-50 tree (official layout): ``data``, else $SOUNDWATCH_ESC50, else ../shared/data/esc50-16k."""
    import os

    from soundwatch.errors import UserError

    path = Path(data) if data else Path(os.environ.get(ESC50_ENV, DEFAULT_ESC50))
    if not (path / "meta" / "esc50.csv").is_file():
        raise UserError(f"{path} is not an ESC-50 tree (no meta/esc50.csv); pass --data DIR")
    return path


@calibrate_app.command("int8")
def calibrate_int8(
    checkpoint: Optional[Path] = CHECKPOINT_ARG,
    data: Optional[Path] = typer.Option(None, "--data", help="ESC-50 tree (default: ../shared/data/esc50-16k)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="calibration manifest JSON; made if absent"),
    folds: str = typer.Option("2,3,4,5", "--folds", help="folds a new manifest draws from (keep the test fold out)"),
    per_class: int = typer.Option(8, "--per-class", min=1, help="clips per class in a new manifest"),
    eval_fold: int = typer.Option(1, "--eval-fold", help="compare fp32 and INT8 top-1 on this fold (0: skip)"),
    threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads for the comparison (0: default)"),
    engines_dir: Optional[Path] = ENGINES_OPT,
) -> None:
    """Calibrate on training-fold clips and write a symmetric INT8 Q/DQ graph (run with --precision int8)."""
    from soundwatch.data.datasets import load_clips
    from soundwatch.engines.quantize import compare_on_fold, quantize_int8
    from soundwatch.models.card import read_card, resolve_model

    path = resolve_model(checkpoint)
    clips = load_clips("esc50", esc50_dir(data), read_card(path).sample_rate)
    graph = quantize_int8(
        path,
        clips,
        manifest or DEFAULT_MANIFEST,
        engines_dir,
        folds=tuple(_int_list(folds, "--folds")),
        per_class=per_class,
    )
    print(f"INT8 Q/DQ graph: {graph}")
    if eval_fold:
        result = compare_on_fold(path, clips, eval_fold, engines_dir, threads)
        print(
            f"ESC-50 fold {result.fold} ({result.clips} clips): top-1 fp32 {result.top1_fp32:.2%}, "
            f"int8 {result.top1_int8:.2%} ({(result.top1_int8 - result.top1_fp32) * 100:+.2f} points); "
            f"same top-1 on {result.agreement:.2%} of clips; embedding cosine {result.embedding_cosine:.4f}"
        )


def build_engine(
    checkpoint: Optional[Path] = CHECKPOINT_ARG,
    precision: str = typer.Option("fp16", "--precision", help="fp32 | fp16 | int8 (int8 needs `calibrate int8`)"),
    max_batch: int = typer.Option(256, "--max-batch", min=1, help="largest batch in the optimisation profile"),
    force: bool = typer.Option(False, "--force", help="rebuild even if a cached plan exists"),
    engines_dir: Optional[Path] = ENGINES_OPT,
) -> None:
    """Build a TensorRT plan (GPU) from the matching ONNX graph; cached under engines/."""
    from soundwatch.engines.tensorrt_engine import ensure_plan
    from soundwatch.models.checkpoint import resolve_model

    print(ensure_plan(resolve_model(checkpoint), precision, max_batch, engines_dir, force))


def bench(
    checkpoint: Optional[Path] = CHECKPOINT_ARG,
    backend: str = typer.Option("torch,onnx", "--backend", help="comma list: torch, onnx, onnx-int8, tensorrt, ..."),
    batch: str = typer.Option("1,8", "--batch", help="comma list of batch sizes"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch and ONNX Runtime"),
    repeats: int = typer.Option(50, "--repeats", min=1, help="timed calls per backend and batch"),
    rounds: int = typer.Option(5, "--rounds", min=1, help="turns the backends take (evens out machine load)"),
    warmup: int = typer.Option(5, "--warmup", min=0, help="untimed calls first"),
    compute: str = typer.Option("auto", "--compute", help="torch device: auto | cpu | cuda"),
    as_markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
    engines_dir: Optional[Path] = ENGINES_OPT,
) -> None:
    """Latency (p50/p99), windows/s and real-time factor per backend, vs torch eager in the same run."""
    from rich.console import Console
    from rich.table import Table

    from soundwatch.models.card import read_card, resolve_model

    checkpoint = resolve_model(checkpoint)
    read_card(checkpoint)  # a file that is no model is refused at once, not by each backend after torch loads

    from soundwatch.engines.bench import HEADER, markdown, rows, run_bench

    results, skipped = run_bench(
        checkpoint,
        backend.split(","),
        _int_list(batch, "--batch"),
        threads,
        repeats,
        warmup,
        compute,
        engines_dir,
        rounds,
    )
    if as_markdown:
        print(markdown(results))
    else:
        table = Table(*HEADER, title=f"soundwatch bench ({threads} thread(s); RTF = time per window / 1 s hop)")
        for row in rows(results):
            table.add_row(*row)
        Console().print(table)
    for note in skipped:
        print(f"skipped {note}")


def register(app: typer.Typer) -> None:
    """Add the engine commands to ``app``."""
    app.command("export")(export)
    app.add_typer(calibrate_app, name="calibrate")
    app.command("build-engine")(build_engine)
    app.command("bench")(bench)
