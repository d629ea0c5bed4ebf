"""The audit sidecar: the full teacher distribution of a small random fraction of positions, kept beside the shards.

A dataset built with ``--audit-fraction F`` keeps, for every position t of every sequence with
``audit_uniforms(seed, key)[t] < F`` (:mod:`logitstore.rng`; a pure function of the spec's seed, the sequence's
content key and t, so the choice never depends on batches, chunks or workers), the log-softmax over the whole
vocabulary in ``audit/NNNNN.parquet`` (one file per shard, written atomically, listed with its sha256 in the
manifest). ``logitstore report`` measures from these rows what other sparsification settings would have kept.

Size: about ``F * tokens * V * 2`` bytes (float16; zstd saves 10-30%). F = 0.001 over 1B tokens at V = 151,936 is
~300 GB; pick F so that ``F * tokens`` is a few thousand positions.

File layout: one row per audited position, in (seq_id, position) order: ``seq_id`` int64, ``position`` int32,
``logprobs`` large_list<float16> of length V (BYTE_STREAM_SPLIT + zstd); row groups of about 32 MiB.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typing_extensions import Self

from logitstore.closeable import aborting
from logitstore.errors import ChecksumMismatchError, CorruptShardError, InvalidInputError
from logitstore.fs import digest, fsync_dir, fsync_tree, open_input
from logitstore.manifest import AuditFileInfo, audit_relpath
from logitstore.rng import audit_uniforms

if TYPE_CHECKING:
    from logitstore.dataset import Dataset

#: Row groups hold about this many bytes of float16 logprobs.
ROW_GROUP_BYTES = 32 << 20
AUDIT_DTYPE = "float16"
ZSTD_LEVEL = 1
#: The oldest format_version whose readers read a sidecar: its layout has not changed since version 1.
SIDECAR_FORMAT_VERSION = 1


def parse_audit_fraction(value: Any, *, name: str = "audit_fraction") -> float:
    """A validated fraction in [0, 1] (0 = no audit)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        raise InvalidInputError(
            f"{name} must be a number in [0, 1] (the fraction of positions whose full teacher distribution is kept "
            f"for `logitstore report`), got {value!r}; e.g. 0.0001. The sidecar takes about "
            "fraction x tokens x vocab_size x 2 bytes"
        )
    return float(value)


def audit_positions(seed: int, key: bytes, length: int, fraction: float) -> np.ndarray:
    """``[n] int64`` ascending positions of a sequence (content ``key``, ``length`` positions) that are audited."""
    if fraction <= 0.0 or length == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(audit_uniforms(seed, key, length) < fraction).astype(np.int64)


def estimated_bytes(fraction: float, tokens: int, vocab_size: int) -> float:
    """Uncompressed size of an audit sidecar: ``fraction * tokens * vocab_size * 2`` bytes."""
    return fraction * tokens * vocab_size * 2.0


def audit_rows(logprobs: Any, seq_id: int) -> np.ndarray:
    """``logprobs [n, V]`` (a numpy array of floats) as the float16 rows an audit file stores; anything else is
    refused naming ``seq_id``."""
    try:
        rows = np.asarray(logprobs)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a bfloat16 or requires-grad torch tensor
        raise InvalidInputError(
            f"audit rows of seq_id {seq_id} must be a numpy array of floats, got {type(logprobs).__name__} ({exc}); "
            "convert a torch tensor with .detach().float().cpu().numpy()"
        ) from None
    if rows.dtype.kind != "f":
        raise InvalidInputError(
            f"audit rows of seq_id {seq_id} must be floating-point log-softmax values, got dtype {rows.dtype}"
        )
    with np.errstate(over="ignore"):  # below float16's range is a probability of 0 (-inf)
        rows = rows.astype(np.float16)  # always a copy: a writer holds rows until a row group fills
    if np.isnan(rows).any():
        found = "NaN"
    elif rows.size and float(rows.max()) > 1e-3:
        found = f"a maximum of {float(rows.max())}"
    else:
        return rows
    raise InvalidInputError(
        f"audit rows of seq_id {seq_id} must be log-softmax values (<= 0, not NaN), found {found}; pass "
        "torch.log_softmax(logits, -1) rows, not raw logits"
    )


class AuditWriter:
    """Writes one shard's sidecar to a unique ``.partial`` name and renames it to ``audit/NNNNN.parquet`` on
    :meth:`commit`. Rows must arrive in (seq_id, position) order; row groups are cut every ``rows_per_group``
    rows, so the bytes depend only on the rows, never on how they were handed over."""

    def __init__(self, root: str | os.PathLike[str], index: int, vocab_size: int):
        self.relpath = audit_relpath(index)
        self.path = Path(root) / self.relpath
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f"{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        self.vocab_size = vocab_size
        self.rows_per_group = max(1, ROW_GROUP_BYTES // (2 * vocab_size))
        self._seq: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0
        self._last: tuple[int, int] = (-1, -1)
        self._writer: pq.ParquetWriter | None = None
        self._done = False

    def write(self, seq_id: int, positions: np.ndarray, logprobs: np.ndarray) -> None:
        """Rows ``logprobs [n, V]`` (log-softmax, any float dtype) of ``positions [n]`` (ascending) of ``seq_id``:
        :func:`audit_rows`, then :meth:`append`. A refused call changes nothing."""
        self.append(seq_id, positions, audit_rows(logprobs, seq_id))

    def append(self, seq_id: int, positions: np.ndarray, rows: np.ndarray) -> None:
        """Rows that :func:`audit_rows` made (float16, checked, this writer's own copy) of ``positions [n]``."""
        self._check_open()
        positions = np.asarray(positions, dtype=np.int64)
        n = len(positions)
        if rows.shape != (n, self.vocab_size):
            raise InvalidInputError(
                f"audit rows of seq_id {seq_id} must be [{n}, {self.vocab_size}] (one full-vocabulary log-softmax "
                f"row per audited position), got {tuple(rows.shape)}"
            )
        if n == 0:
            return
        if (seq_id, int(positions[0])) <= self._last or (n > 1 and not np.all(np.diff(positions) > 0)):
            raise InvalidInputError(f"audit rows must arrive in (seq_id, position) order; seq_id {seq_id} did not")
        self._last = (seq_id, int(positions[-1]))
        self._seq.append(np.full(n, seq_id, dtype=np.int64))
        self._pos.append(positions.astype(np.int32))
        self._rows.append(rows)
        self._buffered += n
        with aborting(self):  # a row group that failed half way leaves a file a commit would append to again
            while self._buffered >= self.rows_per_group:
                self._flush(self.rows_per_group)

    def _flush(self, n: int) -> None:
        seq, pos, rows = (np.concatenate(x) for x in (self._seq, self._pos, self._rows))
        self._write_group(seq[:n], pos[:n], rows[:n])
        self._seq, self._pos, self._rows = [seq[n:]], [pos[n:]], [rows[n:]]
        self._buffered -= n

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            meta = {"format_version": SIDECAR_FORMAT_VERSION, "kind": "audit", "vocab_size": self.vocab_size}
            schema = pa.schema(
                [
                    pa.field("seq_id", pa.int64(), nullable=False),
                    pa.field("position", pa.int32(), nullable=False),
                    pa.field("logprobs", _ROW_TYPE, nullable=False),
                ],
                metadata={"logitstore": json.dumps(meta)},
            )
            self._writer = pq.ParquetWriter(
                self.tmp_path,
                schema,
                compression="zstd",
                compression_level=ZSTD_LEVEL,
                use_dictionary=False,
                use_byte_stream_split=["logprobs.list.element"],
                write_statistics=False,
            )
        return self._writer

    def _write_group(self, seq: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> None:
        writer = self._open()
        offsets = np.arange(len(rows) + 1, dtype=np.int64) * self.vocab_size
        values = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(rows.reshape(-1)), type=_ROW_TYPE)
        table = pa.Table.from_arrays([pa.array(seq), pa.array(pos), values], schema=writer.schema)
        writer.write_table(table, row_group_size=len(rows))
        self._written += len(rows)

    def commit(self) -> AuditFileInfo:
        """Flush, close, rename to the final name and describe the file (an empty file when nothing was audited).
        A commit that fails removes the temporary file and closes the writer."""
        self._check_open()
        with aborting(self):
            if self._buffered:
                self._flush(self._buffered)
            self._open().close()
            self._writer = None
            fsync_tree(self.tmp_path)
            os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)
        self._done = True
        nbytes, sha = digest(fsspec.filesystem("file"), str(self.path))
        return AuditFileInfo(path=self.relpath, num_positions=self._written, nbytes=nbytes, sha256=sha)

    def _check_open(self) -> None:
        if self._done:
            raise InvalidInputError(
                f"audit file {self.relpath} was already committed or aborted; open a new audit writer to write more"
            )

    def abort(self) -> None:
        if not self._done:
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                self._writer = None
                self.tmp_path.unlink(missing_ok=True)
                self._done = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


_ROW_TYPE = pa.large_list(pa.field("element", pa.float16(), nullable=False))


@dataclass(frozen=True)
class AuditRows:
    """Audited positions: ``seq_ids [n] int64``, ``positions [n] int64``, ``logprobs [n, V] float16``."""

    seq_ids: np.ndarray
    positions: np.ndarray
    logprobs: np.ndarray

    def __len__(self) -> int:
        return int(self.seq_ids.shape[0])


def check_file(fs: fsspec.AbstractFileSystem, root: str, info: AuditFileInfo) -> None:
    """Size and sha256 of one sidecar file against the manifest; :class:`ChecksumMismatchError` names it."""
    path = f"{root}/{info.path}"
    if not fs.exists(path):
        raise ChecksumMismatchError(f"{info.path} is missing (the manifest lists it as the shard's audit sidecar)")
    nbytes, sha = digest(fs, path)
    if nbytes != info.nbytes or sha != info.sha256:
        raise ChecksumMismatchError(
            f"{info.path} is corrupt: {nbytes} bytes with sha256 {sha[:16]}..., manifest recorded {info.nbytes} "
            f"bytes with sha256 {info.sha256[:16]}...; restore or rebuild it"
        )


def iter_audit(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: Sequence[AuditFileInfo],
    vocab_size: int,
    *,
    max_positions: int | None = None,
    seed: int = 0,
    verify: bool = False,
) -> Iterator[AuditRows]:
    """The rows of the audit ``files`` under ``root``, one row group at a time (memory stays at one row group).

    With ``max_positions`` below the number of audited positions, a subset of that size chosen by a seeded
    permutation (deterministic) is returned, in file order. ``verify`` checks each file's sha256 first.
    """
    total = sum(f.num_positions for f in files)
    keep: np.ndarray | None = None
    if max_positions is not None and max_positions < total:
        from logitstore.rng import permutation

        keep = np.zeros(total, dtype=bool)
        keep[permutation(total, seed, 0xA0D17)[:max_positions]] = True
    base = 0
    for info in files:
        if info.num_positions == 0 or (keep is not None and not keep[base : base + info.num_positions].any()):
            base += info.num_positions
            continue
        if verify:
            check_file(fs, root, info)
        try:
            with open_input(fs, f"{root}/{info.path}") as f:
                pf = pq.ParquetFile(f)
                rows_seen = 0
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    sel = None if keep is None else keep[base + rows_seen : base + rows_seen + n]
                    rows_seen += n
                    if sel is not None and not sel.any():
                        continue
                    chunk = _decode(pf.read_row_group(g), vocab_size, info.path)
                    if sel is not None:
                        chunk = AuditRows(chunk.seq_ids[sel], chunk.positions[sel], chunk.logprobs[sel])
                    yield chunk
        except (OSError, pa.ArrowException, ValueError) as exc:
            if isinstance(exc, CorruptShardError):
                raise
            raise CorruptShardError(f"{info.path} cannot be read: {type(exc).__name__}: {exc}") from exc
        if rows_seen != info.num_positions:
            raise CorruptShardError(f"{info.path} holds {rows_seen} rows, manifest says {info.num_positions}")
        base += info.num_positions


def read_audit(ds: Dataset, *, max_positions: int | None = None, seed: int = 0, verify: bool = False) -> AuditRows:
    """A dataset's audited rows at once (all, or a seeded subset of ``max_positions``); empty without an audit.
    Mind the size: ``[n, V]`` float16. :func:`iter_audit` streams them instead."""
    m = ds.manifest
    files = m.audit.files if m.audit is not None else ()
    parts = list(iter_audit(ds.fs, ds.root, files, m.vocab_size, max_positions=max_positions, seed=seed, verify=verify))
    if not parts:
        v = m.vocab_size
        return AuditRows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, v), np.float16))
    return AuditRows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("seq_ids", "positions", "logprobs")))


def _decode(table: pa.Table, vocab_size: int, path: str) -> AuditRows:
    column = table.column("logprobs")
    arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    n = len(table)
    if not np.array_equal(np.diff(offsets), np.full(n, vocab_size)):
        raise CorruptShardError(f"{path}: audit rows must hold {vocab_size} logprobs each")
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return AuditRows(
        seq_ids=table.column("seq_id").to_numpy().astype(np.int64),
        positions=table.column("position").to_numpy().astype(np.int64),
        logprobs=values.reshape(n, vocab_size),
    )
