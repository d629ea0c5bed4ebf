"""Small Hugging Face teachers built from scratch: a byte-level BPE tokenizer trained on given texts and a Llama
built from a config and saved as an ordinary checkpoint. The demo, the tests and the benchmarks use these, so a
teacher made here goes through exactly the code path a user's own checkpoint does."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A ``PreTrainedTokenizerFast`` (byte-level BPE; specials ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_llama(
    directory: Path,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    max_positions: int,
    head_scale: float,
    seed: int = 0,
) -> None:
    """Save a randomly initialised Llama (4 heads, 2 KV heads, MLP 2x hidden) whose output head is multiplied by
    ``head_scale``: a random init is nearly uniform, a sharper head gives top-k and sampling real structure."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    model.save_pretrained(directory)
