"""Shared by the loss tests: small teachers and students, and the batch a cache would give for them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from logitstore import Spec
from logitstore.collate import collate
from tests.conftest import sparse_record, teacher_like_logits

V = 40
T = 6


def batch_for(spec: Spec, z: torch.Tensor, *, seeds: int = 1, **fields: bool) -> dict:
    """One batch holding the cache records of teacher logits ``z [B, T, V]`` (sequence i reads tokens
    ``i..i+T-1``); ``fields`` set the spec's optional-field flags (``label_logprob``, ``logit_stats``)."""
    spec = dataclasses.replace(spec, **fields)
    records = [
        sparse_record(spec, z[i], seq_id=i, input_ids=np.arange(i, i + z.shape[1], dtype=np.int32))
        for i in range(z.shape[0])
    ]
    return collate(records, spec=spec, vocab_size=z.shape[-1])


@pytest.fixture
def logits(rng):
    z = torch.stack([teacher_like_logits(rng, T, V) for _ in range(2)])
    s = torch.randn(2, T, V, generator=torch.Generator().manual_seed(0)) * 2
    return z, s
