"""Distil with the Hugging Face ``Trainer``: a subclass whose ``compute_loss`` calls ``logitstore.losses.kd_loss``.

    python examples/hf_trainer_kd.py --cache store/topk64 --student path/to/student --out runs/hf --steps 200

The cache is the training dataset (one record per item) and ``dataset.collate`` the data collator, so the Trainer
builds its own DataLoader as usual. The capture settings (method, k or n, temperatures, vocabulary) come from the
cache's manifest with every batch: nothing is repeated by hand.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from logitstore.losses import KINDS, TAILS, kd_loss
from logitstore.torch import LogitDataset


class KDTrainer(Trainer):
    """``Trainer`` with the loss replaced by ``kd_loss`` on the cached teacher targets in each batch."""

    def __init__(self, *args: Any, kd_options: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kd_options = kd_options or {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = kd_loss(outputs.logits, inputs, **self.kd_options)
        return (loss, outputs) if return_outputs else loss


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kind", choices=KINDS, default="forward_kl")
    p.add_argument("--tail", choices=TAILS, help="divergences and nkd only (default ghost)")
    p.add_argument("--temperature", type=float, help="default 1; sel takes none")
    p.add_argument("--ce-weight", type=float, default=0.0)
    args = p.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.student)
    # The Trainer (through accelerate) splits an IterableDataset across processes itself, by dispatching batches
    # from process 0 or by sharding them, so the dataset must not split again: one global stream, rank 0 of 1.
    dataset = LogitDataset(
        args.cache, student_vocab_size=model.config.vocab_size, tokenizer=args.student, rank=0, world_size=1
    )
    training = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,  # the batch carries the teacher's targets
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = KDTrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        data_collator=dataset.collate,
        kd_options={
            "kind": args.kind,
            "tail": args.tail,
            "temperature": args.temperature,
            "ce_weight": args.ce_weight,
        },
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    main(sys.argv[1:])
