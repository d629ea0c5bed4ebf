"""The two example clients run on a real cache of a real teacher, and their KD loss goes down."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from logitstore import open_dataset

pytestmark = [pytest.mark.slow, pytest.mark.ray]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(ray_cluster, tmp_path_factory, llama_dir, corpus_jsonl) -> Path:
    from logitstore.workers import precompute

    out = tmp_path_factory.mktemp("store") / "topk16"
    precompute(
        teacher=str(llama_dir), data=str(corpus_jsonl), out=str(out), method="topk", k=16, seq_len=32, progress=False
    )
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory, llama_dir) -> Path:
    """A smaller, differently initialised Llama with the teacher's tokenizer and vocabulary."""
    from logitstore.workers.checkpoints import save_llama

    d = tmp_path_factory.mktemp("student")
    save_llama(d, vocab_size=256, hidden_size=32, num_layers=1, max_positions=64, head_scale=1.0, seed=11)
    for f in llama_dir.glob("*token*"):
        shutil.copy(f, d / f.name)
    return d


def went_down(losses: list[float]) -> bool:
    k = max(2, len(losses) // 5)
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


def test_plain_loop_learns_and_resumes_mid_epoch(cache, student, tmp_path):
    train = load("train_student")
    common = ["--cache", str(cache), "--student", str(student), "--out", str(tmp_path), "--batch-size", "4"]
    losses = train.main([*common, "--steps", "25", "--lr", "3e-3"])
    assert len(losses) == 25 and went_down(losses), losses
    import torch

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    n = len(open_dataset(cache))
    batches_per_epoch = -(-n // 4)
    epoch, batches = divmod(25, batches_per_epoch)
    expected = (epoch, min(4 * batches, n)) if batches else (epoch - 1, n)
    assert (state["loader"]["epoch"], state["loader"]["position"]) == expected
    more = train.main([*common, "--steps", "30", "--resume", "--num-workers", "2"])
    assert len(more) == 5


def test_hf_trainer_subclass_learns(cache, student, tmp_path):
    hf = load("hf_trainer_kd")
    losses = hf.main(
        ["--cache", str(cache), "--student", str(student), "--out", str(tmp_path), "--steps", "25", "--lr", "3e-3"]
        + ["--batch-size", "4", "--ce-weight", "0.1"]
    )
    assert len(losses) == 25 and went_down(losses), losses
