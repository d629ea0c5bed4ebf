"""Locations (local paths or fsspec URLs) and content digests of files and directories."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import fsspec

from logitstore.errors import InvalidInputError

_BLOCK = 1 << 20


#: a dataset of the service: ``http(s)://HOST[:PORT][/prefix]/v1/datasets/NAME``
SERVICE_URL = re.compile(r"(https?://.+?)/v1/datasets/([A-Za-z0-9][A-Za-z0-9._-]*)/?")


def resolve(location: str | os.PathLike[str], *, api_key: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """A local path, fsspec URL or service dataset URL -> (filesystem, path without protocol, no trailing slash).

    A service URL reads the dataset's files through the service's ``/files/`` endpoint (HTTP Range requests), with
    ``api_key`` (default: the ``LOGITSTORE_API_KEY`` environment variable) as a bearer token.
    """
    text = os.fspath(location)
    if not text:
        raise InvalidInputError("an empty path was given; pass a dataset directory or an fsspec URL")
    options: dict[str, Any] = {}
    if SERVICE_URL.fullmatch(text):
        text = text.rstrip("/") + "/files"
        key = api_key or os.environ.get("LOGITSTORE_API_KEY")
        options["client_kwargs"] = {"headers": {"Authorization": f"Bearer {key}"}} if key else {}
    try:
        fs, path = fsspec.core.url_to_fs(text, **options)
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


def open_input(fs: fsspec.AbstractFileSystem, path: str, **remote_options: Any) -> Any:
    """A binary file for pyarrow to read ``path`` from: pyarrow's own file when ``fs`` is local, else fsspec's
    (opened with ``remote_options``). The caller closes it.

    Local files are never Python file objects on pyarrow's read path: pyarrow's decode threads release the buffers
    a Python file hands out after a read has returned, and one released while the interpreter exits aborts the
    process ("terminate called without an active exception", apache/arrow#34314 and #49942).
    """
    if is_local(fs):
        import pyarrow as pa

        return pa.OSFile(path, "rb")
    return fs.open(path, "rb", **remote_options)


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


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every file and directory of a tree (a Zarr group), so a rename that follows publishes
    bytes that are on disk, not only in the page cache."""
    root = os.fspath(path)
    paths = [root]
    if os.path.isdir(root):
        paths = []  # os.walk yields the root itself first
        for dirpath, _, files in os.walk(root):
            paths.append(dirpath)
            paths.extend(os.path.join(dirpath, f) for f in files)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync one directory (not its contents), making a rename inside it durable; best effort."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_digest(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    total = 0
    with fs.open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            total += len(block)
    return total, h.hexdigest()
