"""A tiny torch text classifier for the classifier-teacher tests (importable as module:factory)."""

from __future__ import annotations

import torch


class BagClassifier(torch.nn.Module):
    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.EmbeddingBag(256, 16, mode="mean")
        self.head = torch.nn.Linear(16, self.num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(input_ids)) * 4.0


def make() -> BagClassifier:
    return BagClassifier()
