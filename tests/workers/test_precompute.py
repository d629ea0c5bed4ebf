"""The precompute job end to end on real (tiny) Hugging Face teachers and a real local Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from logitstore import open_dataset
from logitstore.keys import content_key
from logitstore.rng import position_streams
from logitstore.sparsify import sparsify
from logitstore.workers import precompute
from tests.conftest import next_tokens

pytestmark = pytest.mark.ray


def _reference(teacher_dir: Path, ds, spec) -> None:
    """Every stored record equals forward + sparsify computed directly here."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    bound = spec.encoding.error_bound
    for seq_id in range(len(ds)):
        rec = ds[seq_id]
        with torch.no_grad():
            logits = model(torch.from_numpy(rec.input_ids.astype(np.int64))[None]).logits[0]
        key = content_key(rec.input_ids)
        streams, positions = position_streams(spec.seed, [key], [len(rec.input_ids)])
        ref = sparsify(logits, spec, streams=streams, positions=positions, labels=next_tokens(rec.input_ids)).numpy()
        np.testing.assert_allclose(rec.lse, ref["lse"], rtol=1e-4)
        np.testing.assert_array_equal(rec.nnz, ref["nnz"])
        np.testing.assert_array_equal(rec.ids, ref["ids"])
        np.testing.assert_allclose(rec.logprobs, ref["logprobs"], atol=bound + 1e-4)
        if ref["counts"] is not None:
            np.testing.assert_array_equal(rec.counts, ref["counts"])
        assert spec.label_logprob  # a language-model teacher stores it by default
        np.testing.assert_allclose(rec.label_logprob, ref["label_logprob"], atol=bound + 1e-4)
        if spec.logit_stats:
            np.testing.assert_allclose(rec.logit_mean, ref["logit_mean"], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(rec.logit_std, ref["logit_std"], rtol=1e-4)


@pytest.mark.parametrize(
    ("teacher", "method", "extra", "backend"),
    [
        ("llama", "topk", {"k": 16, "logit_stats": True}, "parquet"),
        ("gpt2", "sample", {"n": 20, "seed": 3}, "zarr"),
        ("llama", "topp", {"p": 0.9, "k": 40, "k_min": 2}, "zarr"),
        ("llama", "topk", {"k": 8, "pack": False}, "parquet"),  # unequal lengths: out-of-order batch groups
    ],
)
def test_output_equals_direct_reference(
    ray_cluster, tmp_path, llama_dir, gpt2_dir, corpus_jsonl, teacher, method, extra, backend
) -> None:
    teacher_dir = llama_dir if teacher == "llama" else gpt2_dir
    result = precompute(
        teacher=str(teacher_dir),
        data=str(corpus_jsonl),
        out=str(tmp_path / "ds"),
        method=method,
        seq_len=64,
        backend=backend,
        batch_size=3,
        sequences_per_shard=4,
        progress=False,
        **extra,
    )
    ds = open_dataset(tmp_path / "ds", verify=True)
    m = ds.manifest
    assert len(m.shards) == result.shards_computed > 1
    assert m.teacher.vocab_size == 256 and m.tokenizer.vocab_size is not None and m.tokenizer.vocab_size < 256
    assert m.corpus.seq_len == 64 and m.corpus.num_tokens == sum(len(ds[i].input_ids) for i in range(len(ds)))
    assert not (tmp_path / "ds" / "_job").exists()
    _reference(teacher_dir, ds, m.spec)
