"""Locations (local paths or fsspec URLs) and content digests of files and directories."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import fsspec

from logitstore.errors import InvalidInputError

_BLOCK = 1 << 20


def resolve(location: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """A local path or fsspec URL -> (filesystem, path without protocol, no trailing slash)."""
    text = os.fspath(location)
    if not text:
        raise InvalidInputError("an empty path was given; pass a dataset directory or an fsspec URL")
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ValueError, ImportError) as exc:
        raise InvalidInputError(
            f"cannot open {text!r}: {exc}; use a local path or an fsspec URL whose filesystem is installed "
            "(e.g. pip install s3fs for s3://)"
        ) from None
    return fs, path.rstrip("/") or "/"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol: Any = fs.protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def digest(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    """``(nbytes, sha256 hex)`` of a file, or of a directory tree (a Zarr group).

    A directory's digest is the sha256 of its sorted ``relative path NUL file-sha256 LF`` lines, so it does not
    depend on listing order or on the directory's own name.
    """
    if fs.isdir(path):
        h = hashlib.sha256()
        total = 0
        base = path.rstrip("/") + "/"
        for file in sorted(fs.find(path)):
            n, sha = _file_digest(fs, file)
            total += n
            h.update(f"{file[len(base) :]}\0{sha}\n".encode())
        return total, h.hexdigest()
    return _file_digest(fs, path)


def _file_digest(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    total = 0
    with fs.open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            total += len(block)
    return total, h.hexdigest()
