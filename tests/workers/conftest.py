"""Real teachers for the worker tests: tiny Llama and GPT-2 built from a config, with a BPE tokenizer trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Knowledge distillation trains a small student on the outputs of a large teacher.",
    "Sparse logits keep the top entries of the teacher distribution and the exact log-sum-exp.",
    "Ray schedules actors on every GPU of the cluster; each actor loads the teacher once.",
    "Parquet and Zarr shards are written to a temporary name and renamed when complete.",
    "A resumed job skips committed shards and produces byte-identical output.",
] * 4


def _save_model(kind: str, directory: Path, vocab_size: int) -> None:
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
    _save_model("llama", d, 256)
    return d


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gpt2")
    _save_model("gpt2", d, 256)
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
