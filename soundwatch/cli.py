"""The ``soundwatch`` command line (typer).

Live line: ``devices``, ``listen``, ``subscribe`` (soundwatch/live_cli.py).
Offline line: ``train``, ``eval`` (soundwatch/train/commands.py).
Engines: ``export``, ``calibrate``, ``build-engine``, ``bench`` (soundwatch/engines/commands.py).
Soundscape benchmark: ``make-scenes``, ``eval-scenes`` (soundwatch/scenes_cli.py).

Every user error (bad device, file, config, endpoint, model) ends with exit code 2 and
a one-paragraph message, never a traceback.
"""

from __future__ import annotations

import faulthandler
import logging
import sys

import typer

from soundwatch.errors import UserError

app = typer.Typer(
    name="soundwatch",
    help="Real-time environmental-sound monitoring: microphone -> SoundCLR -> ZeroMQ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from soundwatch import __version__

        try:
            number = version("soundwatch")
        except PackageNotFoundError:  # run from a checkout that was never installed
            number = __version__
        print(f"soundwatch {number}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Real-time environmental-sound monitoring: microphone -> SoundCLR -> ZeroMQ."""


def _register_commands() -> None:
    from soundwatch import live_cli, scenes_cli
    from soundwatch.engines import commands as engine_commands
    from soundwatch.train import commands as train_commands

    for module in (live_cli, train_commands, engine_commands, scenes_cli):
        module.register(app)


class _Format(logging.Formatter):
    """``soundwatch: warning: message``: the library's log lines in the style of the CLI's own."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"soundwatch: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _log_to_stderr() -> None:
    """Warnings and errors from the library's loggers go to stderr, one line each (SOUNDWATCH_LOG=info|debug: more)."""
    import os

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("SOUNDWATCH_LOG", "warning").upper()
    root.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "WARNING")


def main() -> None:
    # a crash in native code (FFmpeg, PortAudio, ONNX Runtime) prints every thread's Python stack to stderr
    faulthandler.enable()
    _log_to_stderr()
    _register_commands()
    try:
        app()
    except UserError as exc:
        print(f"soundwatch: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
