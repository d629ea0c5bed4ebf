"""Is a student compatible with a cache? Vocabulary size, tokenizer and sequence length, checked before training."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.manifest import Manifest


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's sorted ``token -> id`` map (any object with ``get_vocab()``, e.g. a Hugging Face
    tokenizer). The precompute job records it as ``manifest.tokenizer.vocab_hash``."""
    if not hasattr(tokenizer, "get_vocab"):
        raise InvalidInputError(
            f"cannot fingerprint a tokenizer of type {type(tokenizer).__name__}: pass a Hugging Face tokenizer, "
            "its directory, or the 64-hex-digit vocab hash"
        )
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()


def _tokenizer_hash(tokenizer: Any) -> str:
    if isinstance(tokenizer, str) and re.fullmatch(r"[0-9a-f]{64}", tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if not os.path.isdir(path):
            raise InvalidInputError(
                f"tokenizer {path!r} is neither a directory nor a 64-hex-digit vocab hash; pass the student's "
                "tokenizer directory or object"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer_fingerprint(tokenizer)


def check_student(
    manifest: Manifest,
    *,
    vocab_size: int | None = None,
    tokenizer: Any = None,
    seq_len: int | None = None,
    check_tokenizer: bool = True,
) -> int:
    """Refuse a student that cannot learn from this cache; return the number of vocabulary ids both share.

    Args:
        manifest: the cache's manifest.
        vocab_size: the student's logit dimension. Larger than the cache's is fine (a padded student head: the
            extra ids get no teacher mass). Smaller is fine only when the teacher's tokenizer has no more ids than
            the student (the teacher's head was padded); stored entries beyond it are then dropped.
        tokenizer: the student's tokenizer (object, directory or vocab hash); must hash like the teacher's.
        seq_len: the longest sequence the student takes; the cache's sequences must fit.
        check_tokenizer: False skips the tokenizer comparison (cross-tokenizer losses only).

    Returns:
        ``V`` such that teacher ids ``< V`` are used and the student's logits beyond ``V`` are ignored.
    """
    name = manifest.name
    cache_vocab = manifest.vocab_size
    usable = cache_vocab
    if vocab_size is not None:
        if vocab_size < cache_vocab:
            tok = manifest.tokenizer.vocab_size
            if tok is None or tok > vocab_size:
                known = f"its tokenizer has {tok} ids" if tok is not None else "its tokenizer size is not recorded"
                raise SpecMismatchError(
                    f"student vocabulary {vocab_size} < logit dimension {cache_vocab} of cache {name!r}, and "
                    f"{known}: the student cannot represent teacher ids {vocab_size}..{cache_vocab - 1}; use a "
                    f"student head of at least {tok or cache_vocab} ids"
                )
        usable = min(vocab_size, cache_vocab)
    if check_tokenizer and tokenizer is not None:
        expected = manifest.tokenizer.vocab_hash
        got = _tokenizer_hash(tokenizer)
        if expected is None:
            raise SpecMismatchError(
                f"cache {name!r} records no tokenizer hash, so the student's tokenizer cannot be checked; pass "
                "check_tokenizer=False if you know they match"
            )
        if got != expected:
            raise SpecMismatchError(
                f"student tokenizer (vocab hash {got[:12]}...) differs from the teacher's tokenizer of cache "
                f"{name!r} (vocab hash {expected[:12]}..., {manifest.tokenizer.vocab_size} ids): the cached ids "
                "would name different tokens; use the teacher's tokenizer, or pass check_tokenizer=False for a "
                "cross-tokenizer loss"
            )
    cache_len = manifest.corpus.seq_len
    if seq_len is not None and cache_len is not None and seq_len < cache_len:
        raise SpecMismatchError(
            f"cache {name!r} holds sequences of up to {cache_len} tokens but the student takes {seq_len}: "
            f"rebuild the cache with --seq-len {seq_len}, or pass the student's real context length"
        )
    return usable
