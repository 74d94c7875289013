"""Crash-safe file helpers: write to a temp name in the same folder, fsync, rename.

Usage:
    atomic_write_json(out / "done" / "0003.json", {"episode": 3}, fsync=True)
    tmp = tmp_path_for(dest); ...write tmp...; commit_file(tmp, dest, fsync=True)

Every temp name starts with TMP_PREFIX so a later open can sweep leftovers of a killed run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from services.exporter.errors import ExportError, bad

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
ZARR_PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes <chunk>.<uuid>.partial then renames


def tmp_path_for(dest: Path) -> Path:
    """A unique temp path beside `dest`, keeping its suffix (cv2 picks the container by it)."""
    return (
        dest.parent / f"{TMP_PREFIX}{dest.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}{dest.suffix}"
    )


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, dest: Path, fsync: bool) -> None:
    """Atomically move a fully written temp file into place."""
    if fsync:
        fsync_path(tmp)
    os.replace(tmp, dest)
    if fsync:
        fsync_path(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes, fsync: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(dest)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        commit_file(tmp, dest, fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(dest: Path, obj: Any, fsync: bool, indent: int | None = 1) -> None:
    """Deterministic JSON (sorted keys, no timestamps) written temp + fsync + rename."""
    text = json.dumps(
        obj, sort_keys=True, indent=indent, separators=(",", ": ") if indent else (",", ":")
    )
    atomic_write_bytes(dest, text.encode() + b"\n", fsync)


def commit_dir(tmp: Path, dest: Path, fsync: bool) -> None:
    """Move a fully written temp folder into place, replacing a stale one from a failed try."""
    if fsync:
        for entry in os.scandir(tmp):
            fsync_path(Path(entry.path))
        fsync_path(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    if fsync:
        fsync_path(dest.parent)


def remove_quietly(path: Path) -> None:
    """Remove a temp file or folder, ignoring one that is already gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def sweep_temps(folders: list[Path], zarr_roots: list[Path]) -> int:
    """Remove our temp entries in `folders` and zarr's *.partial files under `zarr_roots`."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(TMP_PREFIX):
                remove_quietly(Path(entry.path))
                removed += 1
    for root in zarr_roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith(ZARR_PARTIAL_SUFFIX):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    if removed:
        log.info("removed %d leftover temp file(s) of an interrupted run", removed)
    return removed


class OutputLock:
    """An exclusive advisory lock (flock) on <output>/.lock, so one process writes an output."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(
                "bad_request",
                f"output: {self.path.parent} is being written by another exporter process; "
                "use one exporter per output, or wait for it to close (close_export)",
            ) from None
        self._fd = fd  # the file stays empty so two runs leave identical bytes

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def user_path(path: str, field: str) -> Path:
    """Resolve a path a client sent in `field`; a path the OS cannot name is a bad_request."""
    if "\x00" in path:
        raise bad(f"{field}: {path[:200]!r} contains a NUL byte; send a real file system path")
    try:
        p = Path(path).expanduser().resolve()
        p.exists()  # ENAMETOOLONG and friends surface here rather than as `internal` later
    except (ValueError, OSError) as e:
        raise bad(f"{field}: {path[:200]!r} is not a usable file system path ({e})") from None
    return p
