"""What every shard backend implements: an atomic shard writer and a random-access shard reader."""

from __future__ import annotations

import math
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import fsspec
import numpy as np
from typing_extensions import Self

from logitstore import codec
from logitstore.closeable import aborting
from logitstore.codec import Columns
from logitstore.errors import CorruptShardError, InvalidInputError
from logitstore.fs import digest, fsync_dir, fsync_tree
from logitstore.manifest import ShardInfo
from logitstore.record import Record
from logitstore.spec import Spec

#: Records are encoded and written in groups of at least this many entries (a Parquet row group; a Zarr append).
FLUSH_ENTRIES = 1 << 20


class ShardWriter(ABC):
    """Writes one shard to ``<path>.<pid>-<random>.partial`` and renames it to ``path`` on :meth:`commit`.

    Records must arrive in seq_id order starting at ``first_seq``. Used as a context manager, a shard that was
    not committed is removed on exit, so nothing half-written is ever visible under the final name.
    """

    @classmethod
    def format_version_for(cls, spec: Spec, vocab_size: int) -> int:
        """The oldest format_version whose readers read this backend's shards of ``spec`` over ``vocab_size`` ids:
        the manifest of a dataset of them records it, and each shard's metadata too."""
        return 1

    def __init__(self, path: str | os.PathLike[str], relpath: str, spec: Spec, vocab_size: int, *, first_seq: int):
        self.path = Path(path)
        # A unique temporary name: an orphaned writer of a killed job can never collide with its successor.
        self.tmp_path = self.path.with_name(f"{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        self.relpath = relpath
        self.spec = spec
        self.vocab_size = vocab_size
        self.first_seq = first_seq
        self._pending: list[Record] = []
        self._pending_masses: list[float] = []  # codec.check of each pending record
        self._pending_entries = 0
        self._num_sequences = 0
        self._num_tokens = 0
        self._num_entries = 0
        self._masses: list[float] = []  # stored teacher mass of each written record
        self._row_groups: list[int] = []
        self._done = False
        _remove(self.tmp_path)

    def write(self, record: Record) -> None:
        """Validate ``record`` (:func:`codec.check`: a refused record changes nothing) and :meth:`append` it."""
        self.append(record, codec.check(record, self.spec, self.vocab_size))

    def append(self, record: Record, mass: float) -> None:
        """Append ``record``, which :func:`codec.check` accepted and valued at ``mass`` (it is not validated again,
        so it must not change until its flush); encode and write the pending records once they hold
        :data:`FLUSH_ENTRIES` entries."""
        self._check_open()
        expected = self.first_seq + self._num_sequences + len(self._pending)
        if record.seq_id != expected:
            raise InvalidInputError(f"shard {self.relpath} expected seq_id {expected} next, got {record.seq_id}")
        self._pending.append(record)
        self._pending_masses.append(mass)
        self._pending_entries += record.num_entries
        if self._pending_entries >= FLUSH_ENTRIES:
            with aborting(self):  # a flush that failed half way leaves columns a commit would append to again
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        cols = codec.encode(self._pending, self.spec, self.vocab_size, masses=self._pending_masses)
        self._write_columns(cols)
        self._num_sequences += len(cols)
        self._row_groups.append(len(cols))
        self._num_tokens += int(cols.lengths.sum())
        self._num_entries += int(cols.num_entries.sum())
        self._masses += self._pending_masses
        self._pending, self._pending_masses, self._pending_entries = [], [], 0

    def commit(self) -> ShardInfo:
        """Flush, close, rename to the final name, and describe the committed shard. A commit that fails removes
        the temporary shard and closes the writer."""
        self._check_open()
        with aborting(self):  # a shard that failed to commit leaves no temporary behind
            self._flush()
            if self._num_sequences == 0:
                raise InvalidInputError(f"shard {self.relpath} has no records; a shard holds at least one sequence")
            self._close()
            fsync_tree(self.tmp_path)  # the manifest may name this shard after a power loss: its bytes must be on disk
            _remove(self.path)
            os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)
        self._done = True
        nbytes, sha = digest(fsspec.filesystem("file"), str(self.path))
        return ShardInfo(
            path=self.relpath,
            first_seq=self.first_seq,
            num_sequences=self._num_sequences,
            num_tokens=self._num_tokens,
            num_entries=self._num_entries,
            kept_mass_sum=math.fsum(self._masses),  # whatever the flushes' grouping
            nbytes=nbytes,
            sha256=sha,
            row_groups=tuple(self._row_groups),
        )

    def _check_open(self) -> None:
        if self._done:
            raise InvalidInputError(
                f"shard {self.relpath} was already committed or aborted; open a new shard writer to write more"
            )

    def abort(self) -> None:
        if not self._done:
            try:
                self._discard()
            finally:
                _remove(self.tmp_path)
                self._done = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    @abstractmethod
    def _write_columns(self, cols: Columns) -> None:
        """Append encoded columns to the temporary shard."""

    @abstractmethod
    def _close(self) -> None:
        """Finish the temporary shard (idempotent)."""

    def _discard(self) -> None:
        """Stop writing the temporary shard, which is about to be removed (this base: :meth:`_close`)."""
        self._close()


class ShardReader(ABC):
    """Random access to the records of one committed shard; decodes only the row group / chunks it needs."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, info: ShardInfo, spec: Spec, vocab_size: int):
        self.fs = fs
        self.path = path
        self.info = info
        self.spec = spec
        self.vocab_size = vocab_size
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """A forked child (e.g. a DataLoader worker) must not share the parent's open file position or zarr's
        event-loop thread: drop inherited handles so they are reopened in this process."""
        if self._pid != os.getpid():
            self.close()
            self._pid = os.getpid()

    def __len__(self) -> int:
        return self.info.num_sequences

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Read this shard inside: any failure becomes a :class:`CorruptShardError` that names it."""
        self._after_fork()
        try:
            yield
        except CorruptShardError as exc:
            if self.info.path in str(exc):
                raise
            raise CorruptShardError(f"shard {self.info.path}: {exc}") from exc
        except Exception as exc:
            raise CorruptShardError(f"shard {self.info.path} cannot be read: {type(exc).__name__}: {exc}") from exc

    def read(self, index: int) -> Record:
        """Record at position ``index`` within this shard."""
        return self.read_range(index, index + 1)[0]

    def read_range(self, start: int, stop: int) -> list[Record]:
        """Records ``start..stop-1`` (shard-local indices)."""
        if not (0 <= start <= stop <= len(self)):
            raise IndexError(f"range [{start}, {stop}) is outside shard {self.info.path} of {len(self)} sequences")
        if start == stop:
            return []
        with self._reading():
            cols = self._read_columns(start, stop)
            records = codec.decode(cols, self.spec, self.vocab_size)
        first = self.info.first_seq + start
        if len(records) != stop - start or any(r.seq_id != first + i for i, r in enumerate(records)):
            raise CorruptShardError(f"shard {self.info.path} holds unexpected seq_ids at [{start}, {stop})")
        return records

    def block(self, index: int) -> tuple[int, int]:
        """The shard-local range ``[start, stop)`` that reading record ``index`` decodes anyway (a Parquet row
        group): a cache can keep all of it for the price of the one record. This base: just ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside shard {self.info.path} of {len(self)} sequences")
        with self._reading():
            return self._block(index)

    def _block(self, index: int) -> tuple[int, int]:
        return index, index + 1

    def keys(self) -> np.ndarray:
        """``[n, 16] uint8`` content keys of all records in the shard."""
        with self._reading():
            keys = self._read_keys()
        if keys.shape != (len(self), 16):
            raise CorruptShardError(f"shard {self.info.path} holds {keys.shape[0]} keys, expected {len(self)}")
        return keys

    @abstractmethod
    def _read_columns(self, start: int, stop: int) -> Columns: ...

    @abstractmethod
    def _read_keys(self) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 -- an optional hook: not every reader holds something to release
        """Release open files and caches."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def shard_metadata(writer: ShardWriter) -> dict[str, Any]:
    """What a shard says about itself, so a lone shard file is still interpretable."""
    spec, vocab_size = writer.spec, writer.vocab_size
    return {
        "format_version": writer.format_version_for(spec, vocab_size),
        "spec": spec.to_dict(),
        "vocab_size": vocab_size,
        "entry_order": spec.entry_order,
    }
