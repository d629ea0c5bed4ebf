"""One unit of work: a shard plan entry -> teacher forward -> sparsify -> a committed shard + its commit record.

Micro-batches are formed inside the shard from sequences of equal length (so nothing is ever padded) in seq_id
order, at most ``batch_size`` at a time; the LM head runs ``CHUNK_ELEMENTS // (batch * V)`` positions at a time,
and each sequence's chunk is sparsified on the teacher's device. Only sparse results reach the host, plus, with an
audit fraction, the full log-softmax rows of the audited positions (picked from each chunk where its logits exist).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logitstore.audit import AuditWriter, audit_positions
from logitstore.keys import content_key
from logitstore.manifest import AuditFileInfo, Backend, ShardInfo, write_atomic
from logitstore.record import Record
from logitstore.rng import position_streams
from logitstore.sparsify import sparsify
from logitstore.spec import Spec
from logitstore.workers.corpus import SequenceReader
from logitstore.workers.teachers import Teacher
from logitstore.writer import open_shard_writer

#: Upper bound on ``batch * positions * V`` logits materialized by one LM-head chunk (16 MiB of fp32): large
#: enough for an efficient matmul, small enough that fresh-page faults do not dominate on CPU.
CHUNK_ELEMENTS = 1 << 22
COMMITS_DIR = "commits"


@dataclass(frozen=True)
class ShardTask:
    index: int
    first_seq: int
    num_sequences: int


def commit_record_path(job_dir: Path, index: int) -> Path:
    return job_dir / COMMITS_DIR / f"{index:05d}.json"


def audit_record_path(job_dir: Path, index: int) -> Path:
    """The commit record of shard ``index``'s audit sidecar, written before the shard's own commit record."""
    return job_dir / COMMITS_DIR / f"{index:05d}.audit.json"


#: the audited positions of one sequence and their log-softmax rows ``[n, V]`` (float16)
AuditRows = tuple[np.ndarray, np.ndarray]


def compute_shard(
    task: ShardTask,
    *,
    teacher: Teacher,
    corpus: SequenceReader,
    spec: Spec,
    backend: Backend,
    root: Path,
    job_dir: Path,
    batch_size: int,
    audit_fraction: float = 0.0,
) -> ShardInfo:
    """Compute, write and commit one shard (and, with ``audit_fraction`` > 0, its audit sidecar); returns its
    :class:`ShardInfo` (also saved as a commit record, after the sidecar's)."""
    seq_ids = range(task.first_seq, task.first_seq + task.num_sequences)
    by_length: dict[int, list[int]] = defaultdict(list)
    for s in seq_ids:
        by_length[len(corpus[s])].append(s)
    vocab = teacher.vocab_size
    chunk = max(1, CHUNK_ELEMENTS // max(1, batch_size * vocab))
    writer = open_shard_writer(root, task.index, backend=backend, spec=spec, vocab_size=vocab, first_seq=task.first_seq)
    audit = AuditWriter(root, task.index, vocab) if audit_fraction > 0 else None
    audit_info: AuditFileInfo | None = None
    with writer, audit or contextlib.nullcontext():
        # Records (and their audit rows) are written as soon as every earlier seq_id is done, so a packed corpus
        # (one length but the last) streams through and only out-of-order length groups wait in memory.
        pending: dict[int, tuple[Record, AuditRows | None]] = {}
        next_seq = task.first_seq
        for length in sorted(by_length, key=lambda n: by_length[n][0]):
            group = by_length[length]
            for b0 in range(0, len(group), batch_size):
                batch = group[b0 : b0 + batch_size]
                tokens = np.stack([corpus[s] for s in batch])
                pending.update(_batch_records(teacher, spec, batch, tokens, chunk, audit_fraction))
                while next_seq in pending:
                    rec, rows = pending.pop(next_seq)
                    writer.write(rec)
                    if audit is not None and rows is not None:
                        audit.write(rec.seq_id, *rows)
                    next_seq += 1
        if audit is not None:
            audit_info = audit.commit()  # before the shard: a committed shard always has its sidecar
        info = writer.commit()
    record = commit_record_path(job_dir, task.index)
    record.parent.mkdir(parents=True, exist_ok=True)
    if audit_info is not None:
        write_atomic(audit_record_path(job_dir, task.index), json.dumps(audit_info.to_dict()).encode())
    write_atomic(record, json.dumps(info.to_dict()).encode())
    return info


def _batch_records(
    teacher: Teacher, spec: Spec, seq_ids: list[int], tokens: np.ndarray, chunk: int, audit_fraction: float = 0.0
) -> dict[int, tuple[Record, AuditRows | None]]:
    """Records of equal-length sequences ``tokens [B, T]`` (one forward pass), each with its audit rows (None
    without an audit)."""
    input_ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.ones_like(input_ids)
    keys = [content_key(row) for row in tokens]
    parts: list[list[dict[str, np.ndarray | None]]] = [[] for _ in seq_ids]
    # Audited positions depend on (seed, key, position) only; T bounds a classifier's single position too.
    audited = [audit_positions(spec.seed, key, tokens.shape[1], audit_fraction) for key in keys]
    audit_parts: list[list[AuditRows]] = [[] for _ in seq_ids]
    b = len(seq_ids)
    # the label of position t is the token that follows it; the last position has none (-1)
    next_tokens = torch.cat([input_ids[:, 1:], torch.full((b, 1), -1, dtype=torch.int64)], dim=1)
    for t0, t1, logits in teacher.logit_chunks(input_ids, mask, chunk):
        # One sparsify call for the whole chunk (rows are independent, so this equals per-sequence calls).
        c = t1 - t0
        flat = logits.reshape(b * c, -1)
        streams, positions = position_streams(spec.seed, keys, [c] * b, device=logits.device)
        labels = next_tokens[:, t0:t1].reshape(-1).to(logits.device) if spec.label_logprob else None
        result = sparsify(flat, spec, streams=streams, positions=positions + t0, labels=labels)
        if audit_fraction > 0:
            _audit_rows(flat, result.lse, audited, t0, t1, audit_parts)
        sparse = result.numpy()
        nnz = sparse["nnz"]
        assert nnz is not None
        entry_off = np.concatenate([[0], np.cumsum(nnz, dtype=np.int64)])
        for j in range(b):
            r0, r1 = j * c, (j + 1) * c
            e0, e1 = int(entry_off[r0]), int(entry_off[r1])
            parts[j].append(
                {
                    name: None if value is None else value[r0:r1] if name in _PER_POSITION else value[e0:e1]
                    for name, value in sparse.items()
                }
            )
    out: dict[int, tuple[Record, AuditRows | None]] = {}
    for j, s in enumerate(seq_ids):
        fields = {name: _cat([p[name] for p in parts[j]]) for name in parts[j][0]}
        rec = Record(seq_id=s, key=keys[j], input_ids=tokens[j].astype(np.int32), **fields)  # type: ignore[arg-type]
        rows: AuditRows | None = None
        if audit_fraction > 0:
            kept = [p for p in audit_parts[j] if len(p[0])]
            v = teacher.vocab_size
            rows = (
                (np.concatenate([p[0] for p in kept]), np.concatenate([p[1] for p in kept]))
                if kept
                else (np.zeros(0, np.int64), np.zeros((0, v), np.float16))
            )
        out[s] = (rec, rows)
    return out


def _audit_rows(
    flat: torch.Tensor,
    lse: torch.Tensor,
    audited: list[np.ndarray],
    t0: int,
    t1: int,
    audit_parts: list[list[AuditRows]],
) -> None:
    """Append to ``audit_parts[j]`` the log-softmax rows (``logits - lse``, the sparsifier's own lse, so the rows
    agree with the stored logprobs bit for bit before the float16 cast) of sequence j's audited positions in
    ``[t0, t1)``; ``flat [B * c, V]`` holds the chunk's logits, sequence-major."""
    c = t1 - t0
    picks = [p[(p >= t0) & (p < t1)] for p in audited]
    rows_idx = np.concatenate([j * c + (p - t0) for j, p in enumerate(picks)]).astype(np.int64)
    if len(rows_idx) == 0:
        return
    idx = torch.from_numpy(rows_idx).to(flat.device)
    rows = (flat[idx].float() - lse[idx][:, None]).to(torch.float16).cpu().numpy()
    start = 0
    for j, p in enumerate(picks):
        audit_parts[j].append((p, rows[start : start + len(p)]))
        start += len(p)


_PER_POSITION = ("lse", "nnz", "proposal_lse", "label_logprob", "logit_mean", "logit_std")


def _cat(values: list[np.ndarray | None]) -> np.ndarray | None:
    if values[0] is None:
        return None
    return values[0] if len(values) == 1 else np.concatenate(values)  # type: ignore[arg-type]


def maybe_die_for_test(index: int, attempt: int) -> None:
    """Test hook: with ``LOGITSTORE_TEST_KILL_SHARD=<index>``, the process dies on its first attempt at that shard,
    the way a worker lost to an OOM kill or a preempted node does."""
    target = os.environ.get("LOGITSTORE_TEST_KILL_SHARD")
    if target is not None and int(target) == index and attempt == 0:
        os._exit(1)
