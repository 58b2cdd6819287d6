"""Fetch the official ESC-50 archive once: progress bar, checksum, unpack into the cache.

``ensure_esc50()`` returns a folder in the official layout (``audio/``, ``meta/esc50.csv``):
the cached copy when one is complete, else it downloads the archive (to a ``.part`` file,
then renamed), checks its MD5 against the published value (the one the lhotse/kiwano
recipes pin for ``ESC-50/archive/master.zip``), unpacks it and checks that every clip the
metadata lists is there. ``$SOUNDWATCH_ESC50_URL`` and ``$SOUNDWATCH_ESC50_MD5`` point it
at a mirror (``SOUNDWATCH_ESC50_MD5=none`` skips the checksum for a mirror that repacked
the archive; the layout check still runs).
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from soundwatch.data.datasets import default_cache_dir
from soundwatch.errors import UserError
from soundwatch.models.checkpoint import file_digest

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
ESC50_MD5 = "629e8e9ebc1592bcceb06da6bec40275"
CHUNK = 1 << 16


def download(url: str, dest: Path) -> Path:
    """Stream ``url`` into ``dest`` with a progress bar; a partial file never takes the final name."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(
                *Progress.get_default_columns()[:2],
                DownloadColumn(),
                TransferSpeedColumn(),
                disable=not sys.stderr.isatty(),
            ) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    progress.advance(task, len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise UserError(
            f"cannot download {url}: {getattr(exc, 'reason', exc)}; download it yourself and pass "
            "--data-dir (a folder with audio/ and meta/esc50.csv)"
        ) from exc
    part.replace(dest)
    return dest


def missing_clips(root: Path) -> list[str]:
    """Clips listed in ``meta/esc50.csv`` that have no audio file (by stem) under ``audio/``."""
    stems = {p.stem for p in (root / "audio").iterdir()} if (root / "audio").is_dir() else set()
    with open(root / "meta" / "esc50.csv", newline="") as f:
        return [r["filename"] for r in csv.DictReader(f) if Path(r["filename"]).stem not in stems]


def _complete(root: Path) -> bool:
    return (root / "meta" / "esc50.csv").is_file() and not missing_clips(root)


def ensure_esc50(cache_dir: Path | None = None, url: str | None = None, md5: str | None = None) -> Path:
    """A complete ESC-50 in the official layout under the cache, downloaded if needed."""
    url = url or os.environ.get("SOUNDWATCH_ESC50_URL", ESC50_URL)
    md5 = md5 or os.environ.get("SOUNDWATCH_ESC50_MD5", ESC50_MD5)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / "ESC-50"
    if _complete(root):
        return root
    if root.exists() or root.is_symlink():
        # soundwatch unpacks into a staging folder and renames it whole, so an incomplete ESC-50 here is not its
        # own half-made copy: someone's (a subset, their edits); never deleted to make room for a download
        lacking = (
            f"lacks {len(missing_clips(root))} clip(s)"
            if (root / "meta" / "esc50.csv").is_file()
            else "has no meta/esc50.csv"
        )
        raise UserError(
            f"{root} holds an incomplete ESC-50 (it {lacking}) that soundwatch did not download, so it is not "
            "replaced: pass --data-dir with a complete copy, or move that folder away to download the dataset"
        )
    archive = base / "ESC-50.zip"
    if not archive.is_file():
        print(f"soundwatch: ESC-50 not found in {base}; downloading {url}", file=sys.stderr)
        download(url, archive)
    if md5.lower() != "none":
        got = file_digest(archive, "md5")
        if got != md5.lower():
            archive.unlink()
            raise UserError(
                f"{url}: checksum mismatch (MD5 {got}, expected {md5}); the download was removed. "
                "Try again, or for a trusted mirror set SOUNDWATCH_ESC50_MD5 to its MD5 (or to none)"
            )
    staging = base / "ESC-50.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
    except zipfile.BadZipFile as exc:
        archive.unlink()
        raise UserError(f"{url}: the download is not a zip archive ({exc}); it was removed, try again") from exc
    found = [p.parent.parent for p in staging.rglob("meta/esc50.csv")]
    if not found:
        raise UserError(f"{url}: the archive holds no meta/esc50.csv; it is not the ESC-50 release")
    missing = missing_clips(found[0])
    if missing:
        raise UserError(f"{url}: the archive lacks {len(missing)} clip(s) its metadata lists, e.g. {missing[0]}")
    found[0].replace(root)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return root
