"""The datasets of one store directory as the service sees them: validated names and paths, opened lazily."""

from __future__ import annotations

import os
import re
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
        self._open: dict[str, tuple[tuple[int, int, int], Dataset, threading.Lock]] = {}
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
        opened = self._open.get(name)  # a dict read is atomic; a stale entry has another version
        if opened is None:
            return None
        try:
            st = os.stat(os.path.join(self.root, name, MANIFEST_NAME))
        except OSError:
            return None
        if opened[0] != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return self.cache.entry((name, opened[0], seq_id))

    def directory(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise DatasetNotFoundError(
                f"no dataset {name!r}: names are letters, digits, '.', '_' and '-' (not starting with '.')"
            )
        path = self.root / name
        if not self._inside(path):
            raise DatasetNotFoundError(f"no dataset {name!r} in this store")
        return path

    def file(self, name: str, relpath: str) -> Path:
        """The file ``relpath`` of dataset ``name``, refused unless it is one a reader needs and stays inside."""
        directory = self.directory(name)
        if not self._manifest(directory).is_file():
            raise DatasetNotFoundError(f"no dataset {name!r} in this store")
        if not SERVED.fullmatch(relpath) or ".." in relpath.split("/"):
            raise NotFoundError(f"no file {relpath!r} in dataset {name!r}")
        path = directory / relpath
        if not path.is_file() or not self._inside(path):
            raise NotFoundError(f"no file {relpath!r} in dataset {name!r}")
        return path

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
