"""Records -> one padded batch of torch tensors, the input of :func:`logitstore.losses.kd_loss`.

A batch (a plain ``dict``, so DataLoaders, ``pin_memory``, Hugging Face ``Trainer`` and ``accelerate`` handle it)
holds, for ``B`` sequences of at most ``T`` positions and ``K`` = the most entries any position has:

==================  ==============  ==========================================================================
key                 shape / dtype   meaning
==================  ==============  ==========================================================================
input_ids           [B, L] int64    tokens (L = T for a language model; padded with ``pad_token_id``)
attention_mask      [B, L] int64    1 on real tokens
labels              [B, T] int64    language models only: ``input_ids`` shifted left (``labels[:, t]`` is the
                                    token position t predicts), -100 on the last position and padding
target_ids          [B, T, K] int32 teacher token ids (0 where ``target_mask`` is False; ``.long()`` them for
                                    ``torch.gather``)
target_logprobs     [B, T, K] f32   teacher log-probabilities at temperature 1 (-inf where masked)
target_counts       [B, T, K] int32 ``sample`` caches only: draws per id (0 where masked)
target_mask         [B, T, K] bool  which entries are real
lse                 [B, T] f32      teacher log-sum-exp per position (0 on padding)
proposal_lse        [B, T] f32      ``sample`` caches with a proposal temperature != 1 only
label_logprob       [B, T] f32      caches with ``label_logprob``: teacher logprob of ``labels`` (NaN where a
                                    position has no label)
logit_mean          [B, T] f32      caches with ``logit_stats``: mean of the teacher's raw logits
logit_std           [B, T] f32      caches with ``logit_stats``: their standard deviation (1 on padding)
position_mask       [B, T] bool     positions that hold a teacher distribution
seq_ids             [B] int64       which sequences these are
spec                Spec            how the cache was built (the loss reads method, n, temperatures)
vocab_size          int             teacher ids ``< vocab_size`` are used; student logits beyond are ignored
==================  ==============  ==========================================================================

For a sequence classifier T = 1 and there are no labels (the cache stores the teacher, not ground truth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from logitstore.errors import InvalidInputError
from logitstore.record import Record
from logitstore.spec import Spec

IGNORE_INDEX = -100


def collate(
    records: Sequence[Record],
    *,
    spec: Spec,
    vocab_size: int,
    pad_token_id: int = 0,
    cache_vocab_size: int | None = None,
) -> dict[str, Any]:
    """Pad ``records`` into one batch (see the module docstring for the keys).

    Args:
        records: what a :class:`~logitstore.Dataset` returns; all from one cache.
        spec: the cache's ``manifest.spec``.
        vocab_size: entries with ids ``>= vocab_size`` are masked out (a student head smaller than a padded
            teacher head; see :func:`logitstore.compat.check_student`). Their mass becomes tail mass.
        pad_token_id: fills ``input_ids`` beyond a sequence's end.
        cache_vocab_size: the cache's logit dimension; when ``vocab_size`` is at least that, no id can be beyond
            it (the writer checked) and the scan for such ids is skipped.
    """
    if not records:
        raise InvalidInputError("cannot collate an empty list of records")
    b = len(records)
    lengths = np.fromiter((len(r) for r in records), dtype=np.int64, count=b)
    input_lengths = np.fromiter((len(r.input_ids) for r in records), dtype=np.int64, count=b)
    language_model = bool(np.array_equal(lengths, input_lengths))
    t, n_input = int(lengths.max()), int(input_lengths.max())
    nnz = np.concatenate([r.nnz for r in records])
    k = max(int(nnz.max()), 1)

    input_ids = _pad_rows([r.input_ids for r in records], input_lengths, n_input, pad_token_id, np.int64)
    attention_mask = (np.arange(n_input)[None, :] < input_lengths[:, None]).astype(np.int64)
    position_mask = np.arange(t)[None, :] < lengths[:, None]
    lse = _pad_rows([r.lse for r in records], lengths, t, 0.0, np.float32)

    ids = np.concatenate([r.ids for r in records])
    logprobs = np.concatenate([r.logprobs for r in records])
    shape = (b, t, k)
    if bool(np.all(lengths == t)) and bool(np.all(nnz == k)):
        # every position holds K entries (top-k, dense) and no sequence is short: a reshape, no scatter
        target_mask = np.ones(shape, dtype=bool)
        target_ids, target_logprobs = ids.reshape(shape), logprobs.reshape(shape)
        counts = None if not spec.has_counts else np.concatenate([r.counts for r in records]).reshape(shape)  # type: ignore[misc]
    else:
        # entries are position-major, so a boolean mask of the filled slots takes them in order
        nnz_grid = _pad_rows([r.nnz for r in records], lengths, t, 0, np.int64)
        target_mask = np.arange(k)[None, None, :] < nnz_grid[:, :, None]
        target_ids = _fill(ids, target_mask, 0, np.int32)
        target_logprobs = _fill(logprobs, target_mask, -np.inf, np.float32)
        counts = None
        if spec.has_counts:
            counts = _fill(np.concatenate([r.counts for r in records]), target_mask, 0, np.int32)  # type: ignore[misc]
    may_exceed = cache_vocab_size is None or vocab_size < cache_vocab_size
    if may_exceed and int(ids.max(initial=0)) >= vocab_size:
        beyond = target_ids >= vocab_size
        target_mask = target_mask & ~beyond
        target_ids = np.where(beyond, 0, target_ids).astype(np.int32)
        target_logprobs = np.where(beyond, -np.inf, target_logprobs).astype(np.float32)
        counts = None if counts is None else np.where(beyond, 0, counts)

    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }
    if language_model:
        labels = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
        labels[:, :-1] = np.where(position_mask[:, 1:], input_ids[:, 1:], IGNORE_INDEX)
        batch["labels"] = torch.from_numpy(labels)
    batch["target_ids"] = torch.from_numpy(np.ascontiguousarray(target_ids, dtype=np.int32))
    batch["target_logprobs"] = torch.from_numpy(np.ascontiguousarray(target_logprobs, dtype=np.float32))
    if counts is not None:
        batch["target_counts"] = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int32))
    batch["target_mask"] = torch.from_numpy(np.ascontiguousarray(target_mask))
    batch["lse"] = torch.from_numpy(lse)
    if spec.has_proposal_lse:
        plse = [r.proposal_lse for r in records]
        batch["proposal_lse"] = torch.from_numpy(_pad_rows(plse, lengths, t, 0.0, np.float32))  # type: ignore[arg-type]
    if spec.label_logprob:
        labels_lp = [r.label_logprob for r in records]
        batch["label_logprob"] = torch.from_numpy(_pad_rows(labels_lp, lengths, t, np.nan, np.float32))  # type: ignore[arg-type]
    if spec.logit_stats:
        batch["logit_mean"] = torch.from_numpy(_pad_rows([r.logit_mean for r in records], lengths, t, 0.0, np.float32))  # type: ignore[misc]
        batch["logit_std"] = torch.from_numpy(_pad_rows([r.logit_std for r in records], lengths, t, 1.0, np.float32))  # type: ignore[misc]
    batch["position_mask"] = torch.from_numpy(position_mask)
    batch["seq_ids"] = torch.tensor([r.seq_id for r in records], dtype=torch.int64)
    batch["spec"] = spec
    batch["vocab_size"] = int(vocab_size)
    return batch


def _pad_rows(rows: Sequence[np.ndarray], lengths: np.ndarray, width: int, fill: float, dtype: type) -> np.ndarray:
    """``[B, width]`` with row i = ``rows[i]`` then ``fill``."""
    values = np.concatenate(rows)
    if bool(np.all(lengths == width)):
        return values.reshape(len(rows), width).astype(dtype, copy=False)
    out: np.ndarray = np.full((len(rows), width), fill, dtype=dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = values
    return out


def _fill(values: np.ndarray, mask: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
    """``mask.shape`` array of ``fill`` with ``values`` written, in order, where ``mask`` is True."""
    out = np.full(mask.shape, fill, dtype=dtype)
    out[mask] = values
    return out
