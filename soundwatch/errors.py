"""User-facing errors: raised with a message a user can act on, turned into exit code 2 by the CLI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (device, file, config, endpoint, model): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid config file or value; the message names the key, the line and the reason."""


class DeviceError(UserError):
    """An audio device that does not exist or cannot be opened; the message lists the devices."""


class CheckpointError(UserError):
    """A model file that is not a soundwatch checkpoint or does not match what was expected."""


def check_output_file(flag: str, path: Path, make_parents: bool = False) -> None:
    """Refuse, before any work, an output file path that cannot be written: a directory, a path under a
    file, under a missing folder (unless the writer makes its folders: ``make_parents``), or where no
    file can be made (permissions, a read-only or special file system: a file is made in the nearest
    existing folder and removed at once), so a long job never ends unable to save its result."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give the path of a file to write")
    _check_writable(flag, path, path.parent, make_parents)


def check_new_file(flag: str, path: Path, why: str) -> None:
    """Refuse a path that already holds something (a file, a folder, a link, even a broken one): the
    writer never replaces anything; ``why`` says what not to lose and what to do."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError(f"{flag} {path}: already exists; {why}")


def check_json_output(flag: str, path: Path) -> None:
    """``check_output_file`` for a JSON report or calibration, which may replace an earlier one: an
    existing file that is not a JSON object (a recording, a model, notes) is refused, not overwritten."""
    import json

    check_output_file(flag, path, make_parents=True)
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    data = None
    try:
        if path.is_file() and path.stat().st_size <= 64 * 1024 * 1024:  # what soundwatch writes is far smaller
            data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        pass  # unreadable or not JSON: refused below
    if not isinstance(data, dict):
        raise UserError(
            f"{flag} {path}: already exists and is not a JSON file soundwatch wrote (a recording? a model?), so "
            "it is not overwritten: choose another path, or remove it first"
        )


def check_output_dir(flag: str, path: Path) -> None:
    """Refuse, before any work, a folder to write into (made if missing) that cannot be one: a file, a
    path under a file, or a place where nothing can be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a directory")
    _check_writable(flag, path, path, make_parents=True)


def _check_writable(flag: str, shown: Path, folder: Path, make_parents: bool) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise UserError(f"{flag} {shown}: {existing} is not a directory")
    if existing != folder and not make_parents:
        raise UserError(f"{flag} {shown}: directory {folder} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown}: cannot write in {existing} (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".soundwatch-write-check-")
    except OSError as exc:
        raise UserError(f"{flag} {shown}: cannot write in {existing} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
