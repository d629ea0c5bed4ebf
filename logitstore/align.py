"""Cross-tokenizer alignment: re-tokenize a cached batch for a student with another tokenizer, and pair positions.

A cache's positions belong to the teacher's tokenization. A student with another tokenizer reads the same text as
other tokens, so its position j (predicting what follows its token j) is paired with the teacher position t that
predicts what follows the *same character*: the one whose token ends where the student's token j ends. Both then
predict the continuation of the same prefix, over different vocabularies, which is what ULD
(:func:`logitstore.losses.uld_loss`) compares. Student positions with no teacher token ending at the same place
(a student token that ends inside a teacher token) are unpaired and skipped by the loss.

Cost: per sequence one decode with the teacher's tokenizer and two encodes with offsets (the teacher's, to locate
its tokens in the text, and the student's), on the CPU in the loader; the paired fraction depends on how alike the
two tokenizers are (``aligned_fraction`` in each batch, and ``bench/kd_quality.py`` reports it). Where re-encoding
the decoded text does not reproduce the teacher's ids (normalizing tokenizers; a packed sequence that starts inside
a multi-byte character), positions after the first difference are left unpaired rather than guessed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from logitstore.collate import IGNORE_INDEX
from logitstore.compat import tokenizer_fingerprint
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.manifest import Manifest


def load_tokenizer(tokenizer: Any, what: str) -> Any:
    """A tokenizer object, or one loaded from a directory."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if not os.path.isdir(path):
            raise InvalidInputError(f"{what} {path!r} is not a directory; pass a tokenizer object or its directory")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise InvalidInputError(f"{what} must be a Hugging Face tokenizer or its directory, got {type(tokenizer)}")
    return tokenizer


class TokenizerAligner:
    """Turns a collated teacher batch into a batch for a student with another tokenizer (module docstring).

    Adds ``teacher_position [B, L] int64`` (the paired teacher position, -1 if none), ``teacher_input_ids``,
    ``aligned_fraction`` (paired student positions / student positions) and ``cross_tokenizer = True``, and replaces
    ``input_ids``, ``attention_mask`` and ``labels`` with the student's ``[B, L]``. Teacher targets stay ``[B, T, K]``.

    Args:
        manifest: the cache's manifest (its tokenizer hash checks ``teacher_tokenizer``).
        student_tokenizer: the student's tokenizer or directory; needs offsets (a "fast" tokenizer).
        teacher_tokenizer: default: the directory the manifest names.
        pad_token_id: pads the student's ``input_ids`` (default: the student tokenizer's pad id, else 0).
    """

    def __init__(
        self,
        manifest: Manifest,
        student_tokenizer: Any,
        *,
        teacher_tokenizer: Any = None,
        pad_token_id: int | None = None,
    ):
        source = teacher_tokenizer if teacher_tokenizer is not None else manifest.tokenizer.name
        if source is None:
            raise InvalidInputError(
                f"cache {manifest.name!r} names no teacher tokenizer; pass teacher_tokenizer= to align a student "
                "with another tokenizer"
            )
        self.teacher = load_tokenizer(source, "teacher_tokenizer")
        expected = manifest.tokenizer.vocab_hash
        if expected is not None and tokenizer_fingerprint(self.teacher) != expected:
            raise SpecMismatchError(
                f"teacher_tokenizer {source!r} is not the tokenizer cache {manifest.name!r} was built with (vocab "
                "hash differs): the cached ids would decode to other text; pass the teacher's own tokenizer"
            )
        self.student = load_tokenizer(student_tokenizer, "student_tokenizer")
        if not getattr(self.student, "is_fast", False) or not getattr(self.teacher, "is_fast", False):
            raise InvalidInputError(
                "cross-tokenizer alignment needs character offsets, which only fast (Rust) Hugging Face tokenizers "
                "give; load both with use_fast=True"
            )
        pad = pad_token_id if pad_token_id is not None else getattr(self.student, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    def align(self, teacher_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``teacher_ids [T]`` -> (``student_ids [L]``, ``teacher_position [L]``, -1 where unpaired)."""
        text = self.teacher.decode(teacher_ids.tolist(), clean_up_tokenization_spaces=False)
        t_enc = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
        t_ids = np.asarray(t_enc["input_ids"], dtype=np.int64)
        n = min(len(t_ids), len(teacher_ids))
        same = np.flatnonzero(t_ids[:n] != teacher_ids[:n])
        reproduced = int(same[0]) if same.size else n
        end_to_teacher = {int(end): t for t, (_, end) in enumerate(t_enc["offset_mapping"][:reproduced])}
        s_enc = self.student(text, add_special_tokens=False, return_offsets_mapping=True)
        student_ids = np.asarray(s_enc["input_ids"], dtype=np.int64)
        where = np.array([end_to_teacher.get(int(end), -1) for _, end in s_enc["offset_mapping"]], dtype=np.int64)
        return student_ids, where

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy().astype(bool)
        rows = [self.align(row[keep]) for row, keep in zip(ids, mask, strict=True)]
        width = max(1, max(len(r[0]) for r in rows))
        b = len(rows)
        student = np.full((b, width), self.pad_token_id, dtype=np.int64)
        where = np.full((b, width), -1, dtype=np.int64)
        attention = np.zeros((b, width), dtype=np.int64)
        labels = np.full((b, width), IGNORE_INDEX, dtype=np.int64)
        for i, (s_ids, pos) in enumerate(rows):
            n = len(s_ids)
            student[i, :n], where[i, :n], attention[i, :n] = s_ids, pos, 1
            labels[i, : max(n - 1, 0)] = s_ids[1:]
        out = dict(batch)
        out["teacher_input_ids"] = batch["input_ids"]
        out["input_ids"] = torch.from_numpy(student)
        out["attention_mask"] = torch.from_numpy(attention)
        out["labels"] = torch.from_numpy(labels)
        out["teacher_position"] = torch.from_numpy(where)
        out["aligned_fraction"] = float((where >= 0).sum() / max(attention.sum(), 1))
        out["cross_tokenizer"] = True
        return out
