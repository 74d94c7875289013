"""Minimal read-only zarr stores: a directory, or a ``.zarr.zip`` file (as UMI ships its data).

Usage: ``store = open_store("/data/pusht.zarr"); raw = store.get("data/img/0.0.0.0")``

Keys are '/'-separated paths relative to the zarr root. ``get`` returns ``None`` for a
missing key (zarr's rule: a missing chunk reads as the fill value). Both stores are safe
to read from several threads at once.
"""

from __future__ import annotations

import os
import threading
import zipfile
from typing import Protocol

from services.reader.errors import DatasetNotFound, NotAReplayBuffer

ROOT_MARKERS = (".zgroup", "zarr.json")  # zarr format 2 / format 3 root group metadata


class Store(Protocol):
    """What the reader needs from a store."""

    path: str

    def get(self, key: str) -> bytes | None: ...

    def list_dir(self, prefix: str) -> list[str]: ...

    def close(self) -> None: ...


class DirectoryStore:
    """A zarr directory store (zarr 2.x ``DirectoryStore`` / zarr 3 ``LocalStore``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self.path, key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(os.path.join(self.path, prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def close(self) -> None:
        pass


class ZipStore:
    """A zarr stored in a zip file; members may sit under one top-level folder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._zf = zipfile.ZipFile(path, mode="r")
        self._lock = threading.Lock()  # one shared file handle: serialise member reads
        names = self._zf.namelist()
        self.prefix = _zip_prefix(names)
        self._names = {n[len(self.prefix) :] for n in names if n.startswith(self.prefix)}
        self._children: dict[str, set[str]] = {}
        for name in self._names:
            parts = name.rstrip("/").split("/")
            for i in range(len(parts)):
                self._children.setdefault("/".join(parts[:i]), set()).add(parts[i])

    def get(self, key: str) -> bytes | None:
        if key not in self._names:
            return None
        with self._lock:
            return self._zf.read(self.prefix + key)

    def list_dir(self, prefix: str) -> list[str]:
        return sorted(self._children.get(prefix.strip("/"), ()))

    def close(self) -> None:
        with self._lock:
            self._zf.close()


def _zip_prefix(names: list[str]) -> str:
    """'' when the zarr root is the zip root, else the single folder holding it."""
    if any(n in ROOT_MARKERS for n in names):
        return ""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1:
        top = tops.pop() + "/"
        if any(n[len(top) :] in ROOT_MARKERS for n in names if n.startswith(top)):
            return top
    return ""


def open_store(path: str) -> Store:
    """Open a directory or zip store; raises DatasetNotFound / NotAReplayBuffer."""
    if not os.path.exists(path):
        raise DatasetNotFound(
            f"path {path!r} does not exist; give the path of a replay buffer "
            "(a .zarr directory or a .zarr.zip file) as seen by the reader's host"
        )
    if os.path.isdir(path):
        return DirectoryStore(path)
    if zipfile.is_zipfile(path):
        return ZipStore(path)
    raise NotAReplayBuffer(
        f"path {path!r} is a file but not a zip; a replay buffer is a .zarr directory "
        "or a .zarr.zip file"
    )
