"""Building a dataset: shards committed one by one, then the key index, then ``manifest.json`` last.

:class:`DatasetWriter` is the in-process writer; the Ray precompute job uses the same three steps
(:func:`prepare_output`, :func:`open_shard_writer`, :func:`finalize`) with shards written by many workers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import fsspec
import numpy as np
from typing_extensions import Self

from logitstore import codec, keyindex
from logitstore.audit import AuditWriter, audit_positions, audit_rows, parse_audit_fraction
from logitstore.closeable import aborting
from logitstore.errors import DatasetExistsError, InvalidInputError
from logitstore.formats import READERS, WRITERS, ShardWriter
from logitstore.fs import digest, is_local, resolve
from logitstore.manifest import (
    AUDIT_DIR,
    JOB_DIR,
    KEY_INDEX_NAME,
    MANIFEST_NAME,
    SHARDS_DIR,
    AuditFileInfo,
    AuditInfo,
    Backend,
    CorpusInfo,
    FileInfo,
    Manifest,
    ShardInfo,
    TeacherInfo,
    TokenizerInfo,
    parse_backend,
    shard_relpath,
    write_atomic,
)
from logitstore.record import Record
from logitstore.spec import Spec

#: A shard is closed once it holds this many entries (about 100-200 MB compressed for LLM top-k caches).
DEFAULT_SHARD_ENTRIES = 1 << 26


def local_root(location: str | os.PathLike[str]) -> Path:
    """Dataset directory for writing; writing needs a local (or mounted) filesystem for atomic renames."""
    fs, path = resolve(location)
    if not is_local(fs):
        raise InvalidInputError(
            f"cannot write a dataset to {os.fspath(location)!r}: writers need a local or mounted path (atomic "
            "rename); write locally and copy the finished dataset directory to object storage"
        )
    return Path(path)


def prepare_output(root: Path, *, overwrite: bool = False) -> None:
    """Refuse to touch a complete dataset unless ``overwrite``; with it, retire the old manifest first."""
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        if not overwrite:
            raise DatasetExistsError(
                f"a complete dataset already exists at {root}; pass overwrite=True (--overwrite) to replace it, "
                "or choose another output path"
            )
        manifest.unlink()  # from here on the dataset is incomplete, so a crash cannot leave a stale manifest
        for name in (KEY_INDEX_NAME, SHARDS_DIR, AUDIT_DIR, JOB_DIR):
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)


def open_shard_writer(
    root: Path, index: int, *, backend: Backend, spec: Spec, vocab_size: int, first_seq: int
) -> ShardWriter:
    relpath = shard_relpath(index, backend)
    return WRITERS[backend](root / relpath, relpath, spec, vocab_size, first_seq=first_seq)


def finalize(
    root: Path,
    *,
    backend: Backend,
    spec: Spec,
    teacher: TeacherInfo,
    shards: Sequence[ShardInfo],
    tokenizer: TokenizerInfo | None = None,
    corpus: CorpusInfo | None = None,
    name: str | None = None,
    audit: AuditInfo | None = None,
) -> Manifest:
    """Write the key index and then, atomically and last, ``manifest.json`` for committed ``shards`` (and their
    audit sidecars, ``audit.files[i]`` belonging to ``shards[i]``)."""
    shards = sorted(shards, key=lambda s: s.first_seq)
    fs = fsspec.filesystem("file")
    keys, seq_ids = [], []
    for s in shards:
        reader = READERS[backend](fs, str(root / s.path), s, spec, teacher.vocab_size)
        try:
            keys.append(reader.keys())
        finally:
            reader.close()
        seq_ids.append(np.arange(s.first_seq, s.first_seq + s.num_sequences, dtype=np.int64))
    data = keyindex.build(
        np.concatenate(keys) if keys else np.zeros((0, 16), np.uint8),
        np.concatenate(seq_ids) if seq_ids else np.zeros(0, np.int64),
    )
    write_atomic(root / KEY_INDEX_NAME, data)
    nbytes, sha = digest(fs, str(root / KEY_INDEX_NAME))
    num_sequences = sum(s.num_sequences for s in shards)
    num_tokens = sum(s.num_tokens for s in shards)
    corpus = corpus or CorpusInfo()
    corpus = CorpusInfo(**{**corpus.to_dict(), "num_sequences": num_sequences, "num_tokens": num_tokens})
    manifest = Manifest(
        format_version=WRITERS[backend].format_version_for(spec, teacher.vocab_size),
        name=name or root.name,
        backend=backend,
        teacher=teacher,
        tokenizer=tokenizer or TokenizerInfo(),
        spec=spec,
        corpus=corpus,
        shards=tuple(shards),
        key_index=FileInfo(path=KEY_INDEX_NAME, nbytes=nbytes, sha256=sha),
        audit=audit,
    )
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


class DatasetWriter:
    """Write records (seq_id 0, 1, 2, ...) into a new dataset; :meth:`finish` makes it complete.

    Example::

        with DatasetWriter("store/my-cache", spec=Spec(method="topk", k=64), teacher=teacher) as w:
            for record in records:
                w.write(record)
        manifest = w.manifest  # written on a clean exit; on an exception committed shards stay, no manifest

    With ``audit_fraction`` F > 0, the full distribution of the positions :meth:`audit_positions` picks (a
    fraction F, chosen from the spec's seed, the content key and the position) goes to the audit sidecar: pass
    their log-softmax rows to :meth:`write` as ``audit_logprobs [n, V]``.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        spec: Spec,
        teacher: TeacherInfo,
        backend: str = "parquet",
        tokenizer: TokenizerInfo | None = None,
        corpus: CorpusInfo | None = None,
        shard_entries: int = DEFAULT_SHARD_ENTRIES,
        overwrite: bool = False,
        name: str | None = None,
        audit_fraction: float = 0.0,
    ):
        self.root = local_root(location)
        self.audit_fraction = parse_audit_fraction(audit_fraction)
        if self.audit_fraction > 0 and spec.method == "dense":
            raise InvalidInputError(
                "audit_fraction applies to sparse methods: a dense dataset already stores every distribution; "
                "use audit_fraction=0"
            )
        self.backend = parse_backend(backend)
        spec.check_vocab(teacher.vocab_size)
        if shard_entries < 1:
            raise InvalidInputError(f"shard_entries must be >= 1, got {shard_entries}")
        self.spec, self.teacher, self.tokenizer, self.corpus = spec, teacher, tokenizer, corpus
        self.shard_entries = shard_entries
        self.name = name
        if (self.root / JOB_DIR).exists():
            raise InvalidInputError(
                f"{self.root} holds an unfinished precompute job (_job/); resume it with the same precompute "
                "command, or remove the directory"
            )
        prepare_output(self.root, overwrite=overwrite)
        # No manifest here, so whatever sits in shards/ is left over from a crashed writer: start clean.
        for stale in (self.root / SHARDS_DIR).iterdir():
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        shutil.rmtree(self.root / AUDIT_DIR, ignore_errors=True)
        self.shards: list[ShardInfo] = []
        self.audit_files: list[AuditFileInfo] = []
        self.manifest: Manifest | None = None
        self._writer: ShardWriter | None = None
        self._audit: AuditWriter | None = None
        self._entries_in_shard = 0
        self._next_seq = 0
        self._failed: str | None = None  # why a shard failed to write or commit: this writer takes nothing more

    def audit_positions(self, record: Record) -> np.ndarray:
        """``[n] int64`` positions of ``record`` whose full distribution the audit keeps (empty without an audit)."""
        return audit_positions(self.spec.seed, record.key, len(record), self.audit_fraction)

    def write(self, record: Record, *, audit_logprobs: np.ndarray | None = None) -> None:
        """Append ``record``; with an audit, ``audit_logprobs [n, V]`` are the log-softmax rows of the
        ``n = len(self.audit_positions(record))`` audited positions (None when n is 0).

        A record or rows that are refused (:class:`InvalidInputError`, naming the problem) change nothing. The
        record is validated here and kept by reference until its shard's next flush: do not modify its arrays
        after this call (the sparsifier returns fresh ones each time); audit rows are copied."""
        if self.manifest is not None:
            raise InvalidInputError("this dataset is already finished; open a new DatasetWriter to write more")
        self._check_not_failed()
        if not isinstance(record, Record):
            raise InvalidInputError(f"DatasetWriter.write takes a logitstore.Record, got {type(record).__name__}")
        if record.seq_id != self._next_seq:
            raise InvalidInputError(
                f"records must arrive in seq_id order: expected {self._next_seq}, got {record.seq_id}"
            )
        mass = codec.check(record, self.spec, self.teacher.vocab_size)
        audited = self.audit_positions(record)
        given = None if audit_logprobs is None else audit_rows(audit_logprobs, record.seq_id)
        if given is None and len(audited):
            raise InvalidInputError(
                f"record seq_id={record.seq_id} has {len(audited)} audited position(s) {audited[:8].tolist()}; pass "
                f"audit_logprobs=[{len(audited)}, {self.teacher.vocab_size}] log-softmax rows of those positions "
                "(DatasetWriter.audit_positions(record) names them)"
            )
        if given is not None and given.size and self.audit_fraction == 0:
            raise InvalidInputError("audit_logprobs were given, but this writer has audit_fraction=0")
        if given is not None and given.shape != (len(audited), self.teacher.vocab_size):
            raise InvalidInputError(
                f"audit_logprobs of seq_id={record.seq_id} must be [{len(audited)}, {self.teacher.vocab_size}] (one "
                f"log-softmax row per audited position), got {tuple(given.shape)}"
            )
        rows = None
        if self.audit_fraction > 0:
            rows = np.zeros((0, self.teacher.vocab_size), np.float16) if given is None else given
        # Refused input has changed nothing above; from here on a failure loses the shard being written.
        if self._writer is None:
            self._writer = open_shard_writer(
                self.root,
                len(self.shards),
                backend=self.backend,
                spec=self.spec,
                vocab_size=self.teacher.vocab_size,
                first_seq=self._next_seq,
            )
        with self._failing(f"shard {self._writer.relpath} failed to write seq_id {record.seq_id}"):
            self._writer.append(record, mass)
            if rows is not None:
                if self._audit is None:
                    self._audit = AuditWriter(self.root, len(self.shards), self.teacher.vocab_size)
                self._audit.append(record.seq_id, audited, rows)  # rows: audit_rows' own copy
        self._next_seq += 1
        self._entries_in_shard += record.num_entries
        if self._entries_in_shard >= self.shard_entries:
            self._commit_shard()

    def _commit_shard(self) -> None:
        if self._writer is not None:
            if self._audit is not None:
                with self._failing(f"audit file {self._audit.relpath} failed to commit"):
                    self.audit_files.append(self._audit.commit())
                self._audit = None
            with self._failing(f"shard {self._writer.relpath} failed to commit"):
                self.shards.append(self._writer.commit())
            self._writer = None
            self._entries_in_shard = 0

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """When the block raises, remember that ``what`` failed (this writer then takes no more records and writes
        no manifest), abort the open shard and audit file, and re-raise."""
        try:
            with aborting(self):
                yield
        except BaseException as exc:
            self._failed = f"{what} ({type(exc).__name__}: {exc})"
            raise

    def _check_not_failed(self) -> None:
        if self._failed is not None:
            raise InvalidInputError(
                f"{self._failed}, so this DatasetWriter takes no more records and writes no manifest: fix the "
                "cause and write the dataset again with a new DatasetWriter (a precompute job resumes from its "
                "committed shards)"
            )

    def finish(self) -> Manifest:
        if self.manifest is None:
            self._check_not_failed()
            self._commit_shard()
            if not self.shards:
                raise InvalidInputError("no records were written; a dataset holds at least one sequence")
            self.manifest = finalize(
                self.root,
                backend=self.backend,
                spec=self.spec,
                teacher=self.teacher,
                shards=self.shards,
                tokenizer=self.tokenizer,
                corpus=self.corpus,
                name=self.name,
                audit=AuditInfo(fraction=self.audit_fraction, files=tuple(self.audit_files))
                if self.audit_fraction > 0
                else None,
            )
        return self.manifest

    def abort(self) -> None:
        if self._audit is not None:
            self._audit.abort()
            self._audit = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            with aborting(self):
                self.finish()
        else:
            self.abort()
