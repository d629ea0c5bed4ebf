"""The datasets of one store directory as the service sees them: validated names and paths, opened lazily."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

from logitstore.dataset import Dataset
from logitstore.errors import CorruptShardError, DatasetNotFoundError, InvalidInputError, NotFoundError
from logitstore.manifest import MANIFEST_NAME
from logitstore.server.cache import Cached, CachingDataset, RecordCache

#: dataset names the service answers for: one path component, no dot-dot, no hidden names
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: the files of a dataset a remote reader may fetch (never _job/ or the lock)
SERVED = re.compile(
    r"(manifest\.json|keys\.idx|audit/[A-Za-z0-9._-]+\.parquet|shards/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)"
)


class Store:
    """Opened datasets are cached; a dataset whose manifest changed (rebuilt with --overwrite) is reopened.

    "Changed" is a different (inode, size, mtime in ns) of manifest.json: writers publish it with ``os.replace``,
    so a rebuild gets a new inode even within one tick of a coarse filesystem clock.

    Decoded records of all datasets share one cache of ``cache_bytes`` (per process; 0: none).
    """

    def __init__(self, root: Path, *, verify: bool = False, cache_bytes: int = 0):
        self.root = root.resolve()
        if not self.root.is_dir():
            raise InvalidInputError(f"store {str(root)!r} is not a directory; pass --store DIR holding datasets")
        self.verify = verify
        self.cache = RecordCache(cache_bytes)
        self._open: dict[str, tuple[tuple[int, int, int], CachingDataset, threading.Lock]] = {}
        self._guard = threading.Lock()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if NAME.fullmatch(p.name) and self._manifest(p).is_file())

    def dataset(self, name: str) -> tuple[Dataset, threading.Lock]:
        """The open dataset ``name`` and the lock that serializes reads of its shard readers."""
        directory = self.directory(name)
        manifest = self._manifest(directory)
        try:
            st = manifest.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise DatasetNotFoundError(f"no dataset {name!r} in this store") from None
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._guard:
            cached = self._open.get(name)
            if cached is None or cached[0] != version:
                try:
                    dataset = CachingDataset(directory, verify=self.verify, cache=self.cache, prefix=(name, version))
                except InvalidInputError as exc:  # the store's file is bad, not the request: a 5xx, not a 422
                    raise CorruptShardError(f"dataset {name!r} cannot be opened: {exc}") from None
                if cached is not None:
                    with cached[2]:  # never close readers under a request that is still reading them
                        cached[1].close()
                    self.cache.discard(name)
                cached = (version, dataset, threading.Lock())
                self._open[name] = cached
        return cached[1], cached[2]

    def cached(self, name: str, seq_id: int) -> Cached | None:
        """The record ``seq_id`` of dataset ``name`` (with its Arrow IPC stream) if the record cache holds it for
        the dataset as it is on disk now, else None (also for a dataset not opened yet, a rebuilt one, or any error:
        :meth:`dataset` then says what is wrong). Reads no shard and opens nothing, so the service calls it on the
        event loop: a hit is answered without a hop to the thread pool.

        It costs one ``stat`` of manifest.json: the name and the directory were checked (:meth:`directory`) when
        the dataset was opened, and a manifest with the same (inode, size, mtime) is the same file, so nothing but
        the records already read from it is served."""
        found = self.cached_many(name, [seq_id])
        return None if found is None else found[0]

    def cached_many(self, name: str, seq_ids: list[int]) -> list[Cached] | None:
        """The records ``seq_ids`` as :meth:`cached` finds them (one ``stat`` for all), or None unless every one is
        in the cache."""
        opened = self._current(name)
        if opened is None:
            return None
        out = []
        for seq_id in seq_ids:
            entry = self.cache.entry((name, opened[0], seq_id))
            if entry is None:
                return None
            out.append(entry)
        return out

    def cached_key(self, name: str, key: bytes) -> Cached | None:
        """The record whose content key is ``key``, as :meth:`cached` finds it, when the dataset's key index is
        already in memory (a binary search); else None (the index not read yet, no such key, a miss)."""
        opened = self._current(name)
        if opened is None:
            return None
        index = opened[1].loaded_key_index()
        found = None if index is None else index.find(key)
        return self.cache.entry((name, opened[0], found[0])) if found else None

    def _current(self, name: str) -> tuple[tuple[int, int, int], CachingDataset, threading.Lock] | None:
        """The open dataset ``name`` if it is the one on disk now (one ``stat`` of its manifest), else None."""
        opened = self._open.get(name)  # a dict read is atomic; a stale entry has another version
        if opened is None:
            return None
        try:
            st = os.stat(os.path.join(self.root, name, MANIFEST_NAME))
        except OSError:
            return None
        if opened[0] != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return opened

    def directory(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise DatasetNotFoundError(
                f"no dataset {name!r}: names are letters, digits, '.', '_' and '-' (not starting with '.')"
            )
        path = self.root / name
        if not self._inside(path):
            raise DatasetNotFoundError(f"no dataset {name!r} in this store")
        return path

    def file(self, name: str, relpath: str) -> tuple[Path, os.stat_result]:
        """The file ``relpath`` of dataset ``name`` (the path with symlinks resolved) and its ``stat``, refused unless
        it is one a reader needs, a regular file, and stays inside the store. Only name checks and metadata calls
        (a few ``stat``s; no shard read), so the service calls it on the event loop."""
        directory = self.directory(name)
        if not self._manifest(directory).is_file():
            raise DatasetNotFoundError(f"no dataset {name!r} in this store")
        if not SERVED.fullmatch(relpath) or ".." in relpath.split("/"):
            raise NotFoundError(f"no file {relpath!r} in dataset {name!r}")
        try:
            path = (directory / relpath).resolve(strict=True)
            st = path.stat()
        except (OSError, RuntimeError):
            raise NotFoundError(f"no file {relpath!r} in dataset {name!r}") from None
        if not stat.S_ISREG(st.st_mode) or not path.is_relative_to(self.root):
            raise NotFoundError(f"no file {relpath!r} in dataset {name!r}")
        return path, st

    def _inside(self, path: Path) -> bool:
        """True when ``path`` resolves (following symlinks) inside the store."""
        try:
            return path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):
            return False

    @staticmethod
    def _manifest(directory: Path) -> Path:
        return directory / MANIFEST_NAME

    def close(self) -> None:
        with self._guard:
            for _, dataset, _ in self._open.values():
                dataset.close()
            self._open.clear()
