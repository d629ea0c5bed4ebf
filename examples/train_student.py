"""Distil a Hugging Face causal LM from a logitstore cache with a plain PyTorch loop.

    python examples/train_student.py --cache store/topk64 --student path/to/student --steps 200 --out runs/kd

The loop is what a user writes by hand: the cache streams through ``LogitLoader`` (rank-aware when launched with
``torchrun``), ``kd_loss`` turns the student's logits and the cached targets into a loss, and a checkpoint holds
the model, the optimizer and the loader's position, so ``--resume`` continues mid-epoch with every sample seen
exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from logitstore.losses import KINDS, TAILS, kd_loss
from logitstore.torch import LogitDataset, LogitLoader


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="dataset path or URL written by `logitstore precompute`")
    p.add_argument("--student", required=True, help="Hugging Face checkpoint directory (with its tokenizer)")
    p.add_argument("--out", required=True, help="where checkpoints and the loss log go")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kind", choices=KINDS, default="forward_kl")
    p.add_argument("--tail", choices=TAILS, help="divergences and nkd only (default ghost)")
    p.add_argument("--temperature", type=float, help="default 1; sel takes none")
    p.add_argument("--ce-weight", type=float, default=0.0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[float]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(args.student).to(device)
    dataset = LogitDataset(
        args.cache,
        batch_size=args.batch_size,
        seed=args.seed,
        student_vocab_size=model.config.vocab_size,
        tokenizer=args.student,
        seq_len=getattr(model.config, "max_position_embeddings", None),
    )
    loader = LogitLoader(dataset, num_workers=args.num_workers, pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    step = 0
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        step = state["step"]

    losses: list[float] = []
    model.train()
    while step < args.steps:
        for batch in loader:  # one pass = the rest of the current epoch; the next pass is the next epoch
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = kd_loss(
                logits,
                batch,
                kind=args.kind,
                tail=args.tail,
                temperature=args.temperature,
                ce_weight=args.ce_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            print(json.dumps({"step": step, "loss": round(loss.item(), 5)}), flush=True)
            if step >= args.steps:
                break
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loader": loader.state_dict(), "step": step},
        checkpoint,
    )
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
