"""Small causal LMs trained on the CPU for the demo: the teacher (cross-entropy on the corpus), and students trained
for the same budget either on cross-entropy alone or on the teacher's cached distributions (``kd_loss``).

Everything is seeded; students start from one saved initialization, read the same batches in the same order
(:class:`~logitstore.torch.LogitLoader` with one seed) and differ only in their loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def llama_config(vocab_size: int, *, hidden_size: int, num_layers: int, max_positions: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(8 * hidden_size / 3) // 16 * 16,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )


def save_initialized(directory: Path, config: Any, *, seed: int) -> None:
    """Save a freshly initialized model (the same weights for every student built from ``directory``)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = directory.with_name(directory.name + ".partial")
    model.save_pretrained(tmp)
    tmp.rename(directory)


def pack(token_lists: Iterable[list[int]], *, seq_len: int, eos_id: int) -> torch.Tensor:
    """Documents joined with EOS and cut into ``[N, seq_len]`` int64 rows (the last partial row dropped)."""
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(eos_id)
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.int64).reshape(n, seq_len)


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: nn.Module,
    batches: Iterator[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    steps: int,
    lr: float,
    desc: str,
) -> list[float]:
    """``steps`` AdamW steps (warmup, cosine to 10%), clipping at norm 1; the per-step losses."""
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    scheduler = _schedule(optimizer, steps)
    losses = []
    with tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True) as bar:
        for _ in range(steps):
            loss = loss_fn(model, next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            bar.update()
    model.eval()
    return losses


def row_batches(rows: torch.Tensor, batch_size: int, *, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled batches of rows, epoch after epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(rows), generator=generator).split(batch_size):
            if len(idx) == batch_size:
                yield rows[idx]


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def train_student(
    init: Path | str,
    source: Path | str,
    loss_options: dict[str, Any],
    *,
    steps: int,
    batch_size: int,
    lr: float = 3e-3,
    seed: int = 0,
    desc: str = "student",
    tokenizer: Any = None,
    block_size: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A student loaded from ``init``, trained for ``steps`` on the cache at ``source`` (a path or the service's
    dataset URL) with ``kd_loss(**loss_options)``; ``ce_weight=1.0`` is plain cross-entropy on the same batches.
    ``tokenizer`` (the student's: an object or a directory) is checked against the cache's. ``block_size`` fixes
    the loader's blocks, so caches of one corpus with different row groups deliver the same batches."""
    from transformers import AutoModelForCausalLM

    from logitstore.losses import kd_loss
    from logitstore.torch import LogitDataset, LogitLoader

    model = AutoModelForCausalLM.from_pretrained(init)
    dataset = LogitDataset(
        source,
        batch_size=batch_size,
        seed=seed,
        student_vocab_size=model.config.vocab_size,
        tokenizer=tokenizer,
        rank=0,
        world_size=1,
        block_size=block_size,
    )
    loader = LogitLoader(dataset)

    def batches() -> Iterator[dict[str, Any]]:
        while True:  # the loader moves on to the next epoch by itself
            yield from loader

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return kd_loss(logits, batch, **loss_options)

    started = time.monotonic()
    losses = fit(model, batches(), loss_fn, steps=steps, lr=lr, desc=desc)
    info = {
        "steps": steps,
        "seconds": round(time.monotonic() - started, 1),
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
    }
    return model, info


@torch.no_grad()
def evaluate(student: nn.Module, teacher: nn.Module, rows: torch.Tensor, *, batch_size: int = 16) -> dict[str, float]:
    """Held-out next-token cross-entropy of ``student`` and ``KL(teacher || student)`` per position (nats), over
    ``rows [N, T]``."""
    ce_sum = kl_sum = 0.0
    count = 0
    for ids in rows.split(batch_size):
        s = torch.log_softmax(student(input_ids=ids).logits[:, :-1].float(), -1)
        t = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)
        ce_sum += float(-s.gather(-1, ids[:, 1:, None]).sum())
        kl_sum += float((t.exp() * (t - s)).sum())
        count += ids[:, 1:].numel()
    return {"ce": ce_sum / count, "kl": kl_sum / count}


@torch.no_grad()
def calibration(model: nn.Module, rows: torch.Tensor, *, bins: int = 15, batch_size: int = 16) -> dict[str, float]:
    """Expected calibration error of the top-1 next-token prediction over ``rows [N, T]``: the positions'
    top-1 confidences in ``bins`` equal-width bins, ``sum_b (n_b / n) |accuracy_b - confidence_b|``; and the
    top-1 accuracy."""
    confidences, correct = [], []
    for ids in rows.split(batch_size):
        probs = torch.softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
        top, arg = probs.max(-1)
        confidences.append(top.flatten())
        correct.append((arg == ids[:, 1:]).flatten().float())
    return {
        "ece": expected_calibration_error(torch.cat(confidences), torch.cat(correct), bins=bins),
        "accuracy": float(torch.cat(correct).mean()),
    }


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, *, bins: int = 15) -> float:
    """ECE of ``confidence [P]`` (in [0, 1]) against ``correct [P]`` (0/1), ``bins`` equal-width bins."""
    index = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return float((conf_sum - correct_sum).abs().sum() / count.sum())


def loss_gradient(model: nn.Module, batch: dict[str, Any], loss_options: dict[str, Any]) -> torch.Tensor:
    """The gradient of ``kd_loss(**loss_options)`` on one cached ``batch`` with respect to every parameter of
    ``model``, flattened to ``[num_parameters]`` float32 (the model's own gradients are left untouched)."""
    from logitstore.losses import kd_loss

    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    grads = torch.autograd.grad(kd_loss(logits, batch, **loss_options), params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten().float() for p, g in zip(params, grads, strict=True)]
    )
