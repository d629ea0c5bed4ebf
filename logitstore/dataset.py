"""Reading a dataset: ``open_dataset(path_or_url)`` -> random access by seq_id or content key."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence

import numpy as np

from logitstore.closeable import Closeable
from logitstore.errors import ChecksumMismatchError, DatasetNotFoundError, SequenceNotFoundError
from logitstore.formats import READERS, ShardReader
from logitstore.fs import digest, resolve
from logitstore.keyindex import KeyIndex
from logitstore.keys import content_key, parse_key
from logitstore.manifest import MANIFEST_NAME, FileInfo, Manifest, ShardInfo
from logitstore.record import Record


class Dataset(Closeable):
    """A complete dataset. ``len(ds)`` sequences; ``ds[seq_id]`` -> :class:`Record`.

    With ``verify=True`` every shard's size and sha256 are checked against the manifest before its first read
    (and the key index before its first lookup); a mismatch raises :class:`ChecksumMismatchError`.
    """

    def __init__(self, location: str | os.PathLike[str], *, verify: bool = False, api_key: str | None = None):
        self.location = os.fspath(location)
        self.api_key = api_key
        self.fs, self.root = resolve(location, api_key=api_key)
        manifest_path = f"{self.root}/{MANIFEST_NAME}"
        if not self.fs.exists(manifest_path):
            if self.fs.isdir(self.root) and self.fs.exists(f"{self.root}/_job"):
                hint = "a precompute job has not finished here; re-run it to resume"
            else:
                hint = "check the path, or build it with `logitstore precompute`"
            raise DatasetNotFoundError(f"no complete dataset at {self.location!r} (no {MANIFEST_NAME}): {hint}")
        with self.fs.open(manifest_path, "rb") as f:
            self.manifest = Manifest.from_json(f.read())
        self.verify = verify
        self._starts = [s.first_seq for s in self.manifest.shards]
        self._readers: dict[int, ShardReader] = {}
        self._key_index: KeyIndex | None = None

    def __len__(self) -> int:
        return self.manifest.num_sequences

    def __getitem__(self, seq_id: int) -> Record:
        i = self._check_seq_id(seq_id)
        shard = self._shard_of(i)
        return self.shard_reader(shard).read(i - self._starts[shard])

    def __iter__(self) -> Iterator[Record]:
        for shard in range(len(self.manifest.shards)):
            reader = self.shard_reader(shard)
            step = 64
            for start in range(0, len(reader), step):
                yield from reader.read_range(start, min(start + step, len(reader)))

    def read_range(self, start: int, stop: int) -> list[Record]:
        """Records with seq_id ``start..stop-1``."""
        if not (0 <= start <= stop <= len(self)):
            raise SequenceNotFoundError(f"range [{start}, {stop}) is outside 0..{len(self)}")
        out: list[Record] = []
        while start < stop:
            shard = self._shard_of(start)
            info = self.manifest.shards[shard]
            end = min(stop, info.first_seq + info.num_sequences)
            out.extend(self.shard_reader(shard).read_range(start - info.first_seq, end - info.first_seq))
            start = end
        return out

    def block(self, seq_id: int) -> tuple[int, int]:
        """The seq_ids ``[start, stop)`` that reading ``seq_id`` decodes anyway (its Parquet row group; just
        ``seq_id`` for Zarr, which reads by chunk): what a cache of decoded records can fill for free."""
        i = self._check_seq_id(seq_id)
        shard = self._shard_of(i)
        start, stop = self.shard_reader(shard).block(i - self._starts[shard])
        return self._starts[shard] + start, self._starts[shard] + stop

    def find_key(self, key: bytes | str) -> list[int]:
        """seq_ids whose content key is ``key`` (16 bytes or 32 hex chars); empty when not cached."""
        return self.key_index.find(parse_key(key))

    def get_by_key(self, key: bytes | str) -> Record:
        """The (first) record whose content key is ``key``."""
        found = self.find_key(key)
        if not found:
            k = parse_key(key).hex()
            raise SequenceNotFoundError(f"no sequence with content key {k} in dataset {self.manifest.name!r}")
        return self[found[0]]

    def get_by_tokens(self, input_ids: Sequence[int] | np.ndarray) -> Record:
        """The record whose input_ids are exactly ``input_ids``."""
        return self.get_by_key(content_key(input_ids))

    @property
    def key_index(self) -> KeyIndex:
        if self._key_index is None:
            info = self.manifest.key_index
            path = f"{self.root}/{info.path}"
            if self.verify:
                self._check_digest(info, path)
            with self.fs.open(path, "rb") as f:
                self._key_index = KeyIndex(f.read(), name=info.path)
        return self._key_index

    def shard_reader(self, shard: int) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            info = self.manifest.shards[shard]
            path = f"{self.root}/{info.path}"
            if self.verify:
                self._check_digest(info, path)
            reader = READERS[self.manifest.backend](self.fs, path, info, self.manifest.spec, self.manifest.vocab_size)
            self._readers[shard] = reader
        return reader

    def _check_digest(self, info: FileInfo | ShardInfo, path: str) -> None:
        rel = info.path
        if not self.fs.exists(path):
            raise ChecksumMismatchError(f"{rel} is missing from dataset {self.manifest.name!r}")
        nbytes, sha = digest(self.fs, path)
        if nbytes != info.nbytes or sha != info.sha256:
            raise ChecksumMismatchError(
                f"{rel} is corrupt: {nbytes} bytes with sha256 {sha[:16]}..., manifest recorded "
                f"{info.nbytes} bytes with sha256 {info.sha256[:16]}...; restore or rebuild it"
            )

    def _check_seq_id(self, seq_id: int) -> int:
        if isinstance(seq_id, (bool, np.bool_)) or not isinstance(seq_id, (int, np.integer)):
            raise SequenceNotFoundError(f"seq_id must be an integer, got {seq_id!r}")
        i = int(seq_id)
        if not (0 <= i < len(self)):
            raise SequenceNotFoundError(f"seq_id {i} is outside 0..{len(self) - 1} of dataset {self.manifest.name!r}")
        return i

    def _shard_of(self, seq_id: int) -> int:
        return bisect.bisect_right(self._starts, seq_id) - 1

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Dataset({m.name!r}, {m.spec.describe()}, backend={m.backend}, sequences={len(self)}, "
            f"tokens={m.num_tokens})"
        )


def open_dataset(location: str | os.PathLike[str], *, verify: bool = False, api_key: str | None = None) -> Dataset:
    """Open a complete dataset at a local path, an fsspec URL, or a service URL
    ``http://HOST:PORT/v1/datasets/NAME`` (read through the service; ``api_key`` if it wants one)."""
    return Dataset(location, verify=verify, api_key=api_key)
