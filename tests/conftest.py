"""Shared fixtures and record factories for the test suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings

from logitstore import Record, Spec, TeacherInfo, content_key
from logitstore.rng import position_streams
from logitstore.sparsify import sparsify

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("default")


def random_input_ids(rng: np.random.Generator, length: int, vocab_size: int) -> np.ndarray:
    return rng.integers(0, vocab_size, size=length, dtype=np.int64).astype(np.int32)


def sparse_record(
    spec: Spec, logits: torch.Tensor, *, seq_id: int, input_ids: np.ndarray, chunk_elements: int | None = None
) -> Record:
    """The record the precompute job would store for ``logits [T, V]`` over ``input_ids``."""
    key = content_key(input_ids)
    streams, positions = position_streams(spec.seed, [key], [len(input_ids)])
    kwargs = {} if chunk_elements is None else {"chunk_elements": chunk_elements}
    sparse = sparsify(logits, spec, streams=streams, positions=positions, **kwargs).numpy()
    return Record(seq_id=seq_id, key=key, input_ids=input_ids, **sparse)  # type: ignore[arg-type]


def synthetic_record(
    spec: Spec, rng: np.random.Generator, *, seq_id: int, length: int, vocab_size: int, neg_inf: bool = False
) -> Record:
    """A valid record built directly (no dense logits), so huge vocabularies and long sequences stay cheap.

    Logprobs are arbitrary values in [-30, 0] consistent with the spec's entry order; ``neg_inf`` puts ``-inf``
    in a few entries (masked logits)."""
    input_ids = random_input_ids(rng, length, vocab_size)
    m = spec.method
    if m == "dense":
        nnz = np.full(length, vocab_size, dtype=np.int32)
    elif m == "topk":
        nnz = np.full(length, spec.k, dtype=np.int32)
    elif m == "topp":
        k_max = min(spec.k, vocab_size)
        nnz = rng.integers(min(spec.effective_k_min, k_max), k_max + 1, size=length).astype(np.int32)
    else:
        nnz = rng.integers(1, min(spec.n, vocab_size) + 1, size=length).astype(np.int32)
    ids_parts, lp_parts, count_parts = [], [], []
    for t in range(length):
        k = int(nnz[t])
        if m == "dense":
            ids = np.arange(vocab_size)
        else:
            gaps = rng.integers(1, max(1, (vocab_size - 1) // max(k, 1)) + 1, size=k)
            gaps[0] = 0
            span = int(gaps.sum())
            ids = rng.integers(0, vocab_size - span) + np.cumsum(gaps)
        lp = -rng.exponential(5.0, size=k).clip(max=30)
        # normalize so the stored entries carry a random share of the mass (all of it when dense)
        kept = 1.0 if m == "dense" else rng.uniform(0.2, 1.0)
        lp = lp - np.log(np.exp(lp).sum()) + np.log(kept)
        if neg_inf and k > 1 and rng.random() < 0.3:
            lp[rng.integers(0, k, size=2)] = -np.inf  # masked logits, sometimes two at once
        if spec.entry_order == "rank":
            ids = rng.permutation(ids)
            lp = np.sort(lp)[::-1]
        ids_parts.append(ids)
        lp_parts.append(lp)
        if m == "sample":
            cuts = np.sort(rng.choice(np.arange(1, spec.n), size=k - 1, replace=False)) if k > 1 else np.array([], int)
            count_parts.append(np.diff(np.concatenate([[0], cuts, [spec.n]])))
    lse = rng.normal(10, 3, size=length).astype(np.float32)
    return Record(
        seq_id=seq_id,
        key=content_key(input_ids),
        input_ids=input_ids,
        lse=lse,
        nnz=nnz,
        ids=np.concatenate(ids_parts).astype(np.int32),
        logprobs=np.concatenate(lp_parts).astype(np.float32),
        counts=np.concatenate(count_parts).astype(np.int32) if m == "sample" else None,
        proposal_lse=(lse * 0.5).astype(np.float32) if spec.has_proposal_lse else None,
    )


def teacher_like_logits(rng: np.random.Generator, length: int, vocab_size: int) -> torch.Tensor:
    """``[T, V] float32`` logits with a Zipf-like prior over ids plus noise (entropy a few nats)."""
    prior = -1.1 * np.log(np.arange(1, vocab_size + 1))
    z = prior[None, :] + rng.normal(0, 1.5, size=(length, vocab_size))
    return torch.from_numpy(z.astype(np.float32))


def teacher(vocab_size: int) -> TeacherInfo:
    return TeacherInfo(name="test-teacher", vocab_size=vocab_size, dtype="float32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
