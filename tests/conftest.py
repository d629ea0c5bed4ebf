"""Shared fixtures and record factories for the test suite, and real teachers: tiny Llama and GPT-2 built from a
config with a BPE tokenizer trained here, a JSONL corpus, and one embedded Ray per session."""

from __future__ import annotations

import json
from pathlib import Path

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
    if spec.label_logprob:
        kwargs["labels"] = next_tokens(input_ids)
    sparse = sparsify(logits, spec, streams=streams, positions=positions, **kwargs).numpy()
    return Record(seq_id=seq_id, key=key, input_ids=input_ids, **sparse)  # type: ignore[arg-type]


def next_tokens(input_ids: np.ndarray) -> torch.Tensor:
    """``[T] int64`` label of each position: the following token, -1 at the last."""
    return torch.from_numpy(np.append(np.asarray(input_ids, dtype=np.int64)[1:], -1))


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
    label = None
    if spec.label_logprob:
        label = -rng.exponential(3.0, size=length).clip(max=40)
        if neg_inf:
            label[rng.random(length) < 0.05] = -np.inf
        for t in range(length - 1):  # a label among the stored ids has that entry's logprob (verify checks it)
            hit = np.flatnonzero(ids_parts[t] == input_ids[t + 1])
            if hit.size:
                label[t] = lp_parts[t][hit[0]]
        label[-1] = np.nan
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
        label_logprob=None if label is None else label.astype(np.float32),
        logit_mean=rng.normal(0, 2, size=length).astype(np.float32) if spec.logit_stats else None,
        logit_std=rng.uniform(0.5, 4, size=length).astype(np.float32) if spec.logit_stats else None,
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


# -- real teachers and corpora (workers, examples) ---------------------------------------------------------------

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Knowledge distillation trains a small student on the outputs of a large teacher.",
    "Sparse logits keep the top entries of the teacher distribution and the exact log-sum-exp.",
    "Ray schedules actors on every GPU of the cluster; each actor loads the teacher once.",
    "Parquet and Zarr shards are written to a temporary name and renamed when complete.",
    "A resumed job skips committed shards and produces byte-identical output.",
] * 4


def save_test_model(kind: str, directory: Path, vocab_size: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from logitstore.workers.checkpoints import save_llama, train_bpe_tokenizer

    if kind == "llama":
        save_llama(directory, vocab_size=vocab_size, hidden_size=32, num_layers=2, max_positions=256, head_scale=30.0)
    else:
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
        )
        model = GPT2LMHeadModel(config)
        with torch.no_grad():  # a random init is nearly uniform; sharpen it so top-k and sampling see structure
            model.get_output_embeddings().weight.mul_(30.0)
        model.save_pretrained(directory)
    train_bpe_tokenizer(CORPUS, 200).save_pretrained(directory)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A Llama teacher whose logit dimension (256) is padded beyond its tokenizer's ~200 ids."""
    d = tmp_path_factory.mktemp("llama")
    save_test_model("llama", d, 256)
    return d


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gpt2")
    save_test_model("gpt2", d, 256)
    return d


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the session: starting Ray costs seconds, jobs reuse the running instance."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
