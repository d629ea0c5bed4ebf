"""Real teacher logits for the storage benchmark: a Hugging Face causal LM over a text corpus.

``ModelTeacher(directory, text)`` loads the model (float32, CPU) and its tokenizer from a local directory, tokenizes
the corpus (JSONL with a ``text`` field, or a plain text file: one document per non-empty line), joins the documents
with the tokenizer's EOS id and cuts the stream into sequences. ``input_ids(i, T)`` and ``logits(i, T)`` give
sequence i's tokens and the model's ``[T, V]`` logits, the same interface the benchmark uses for the synthetic
:class:`teacher_like.TeacherLike`, so every measurement runs unchanged on real distributions.

The demo teacher (``logitstore demo`` or ``bench/kd_quality.py``, kept in ``bench/out/kd_quality/teacher``) and its
held-out corpus (``bench/out/kd_quality/corpus/heldout.jsonl``) are the intended inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class ModelTeacher:
    def __init__(self, directory: str | Path, text: str | Path, max_tokens: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.directory = Path(directory)
        self.text = Path(text)
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
        self.model = AutoModelForCausalLM.from_pretrained(self.directory, dtype=torch.float32).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"the tokenizer in {self.directory} has no EOS token to join documents with")
        stream: list[int] = []
        for doc in _documents(self.text):
            stream += self.tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
            if max_tokens is not None and len(stream) >= max_tokens:
                break
        self.tokens = np.asarray(stream, dtype=np.int32)

    def check_length(self, num_seqs: int, seq_len: int) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and seq_len > limit:
            raise ValueError(f"--seq-len {seq_len} exceeds the model's {limit} positions; pass --seq-len {limit}")
        if len(self.tokens) < num_seqs * seq_len:
            raise ValueError(
                f"{self.text} gives {len(self.tokens):,} tokens, fewer than the {num_seqs} x {seq_len} asked for; "
                "pass a larger corpus or a smaller --tokens"
            )

    def input_ids(self, index: int, length: int) -> np.ndarray:
        """``[length] int32`` tokens of sequence ``index``."""
        return self.tokens[index * length : (index + 1) * length]

    @torch.inference_mode()
    def logits(self, index: int, length: int) -> torch.Tensor:
        """``[length, V] float32`` logits of the model on sequence ``index``."""
        ids = torch.from_numpy(self.input_ids(index, length).astype(np.int64))[None]
        return self.model(ids).logits[0].float().contiguous()

    def describe(self) -> str:
        config = self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{config.model_type} from {self.directory} ({params / 1e6:.1f}M parameters, V={self.vocab_size}, "
            f"hidden {config.hidden_size}, {config.num_hidden_layers} layers) over {self.text.name}"
        )


def _documents(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in lines]
    return lines
