"""Corpora -> packed token sequences with deterministic seq ids, spilled to disk so memory stays flat.

Sources: Parquet (an ``input_ids`` column, or a text column), JSONL (a text field), plain text files (one document
per file), and Hugging Face ``datasets`` directories saved with ``save_to_disk``. A directory of Parquet / JSONL /
text files is read in sorted filename order. Documents are tokenized and either packed (joined with EOS and cut
into ``seq_len`` pieces; the last piece may be shorter) or kept one per sequence (truncated to ``seq_len``).

The result is written to ``<job>/tokens.bin`` (int32) and ``<job>/sequences.npy`` (int64 offsets), which every
worker maps read-only; the driver never holds the whole corpus in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.errors import InvalidInputError
from logitstore.manifest import write_atomic

TOKENS_NAME = "tokens.bin"
OFFSETS_NAME = "sequences.npy"
CORPUS_META = "corpus.json"
_TEXT_SUFFIXES = (".txt", ".md", ".text")
_JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Document:
    """One corpus document: text to tokenize, or ids already tokenized."""

    text: str | None = None
    input_ids: list[int] | None = None


def detect_format(path: Path) -> str:
    """``parquet`` | ``jsonl`` | ``text`` | ``hf`` for a file or a directory of files."""
    if not path.exists():
        raise InvalidInputError(f"data path {str(path)!r} does not exist; pass a Parquet/JSONL/text file or directory")
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "hf"
        files = _data_files(path)
        if not files:
            raise InvalidInputError(
                f"data directory {str(path)!r} holds no .parquet, .jsonl or .txt files and is not a Hugging Face "
                "dataset saved with save_to_disk"
            )
        kinds = {detect_format(f) for f in files}
        if len(kinds) > 1:
            raise InvalidInputError(f"data directory {str(path)!r} mixes formats {sorted(kinds)}; use one format")
        return kinds.pop()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise InvalidInputError(
        f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}: use .parquet, .jsonl or .txt"
    )


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    suffixes = (".parquet", *_JSONL_SUFFIXES, *_TEXT_SUFFIXES)
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def iter_documents(path: Path, *, text_column: str = "text") -> Iterator[Document]:
    """Documents of a corpus in a deterministic order."""
    fmt = detect_format(path)
    if fmt == "hf":
        yield from _iter_hf(path, text_column)
        return
    for file in _data_files(path):
        if fmt == "parquet":
            yield from _iter_parquet(file, text_column)
        elif fmt == "jsonl":
            yield from _iter_jsonl(file, text_column)
        else:
            yield Document(text=file.read_text(encoding="utf-8"))


def _iter_parquet(file: Path, text_column: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(file)
    names = pf.schema_arrow.names
    column = "input_ids" if "input_ids" in names else text_column
    if column not in names:
        raise InvalidInputError(
            f"{file} has neither an 'input_ids' column nor the text column {text_column!r} (columns: {names}); "
            "pass --text-column NAME"
        )
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is None:
                continue
            yield Document(input_ids=list(value)) if column == "input_ids" else Document(text=str(value))


def _iter_jsonl(file: Path, text_column: str) -> Iterator[Document]:
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{file}:{lineno} is not valid JSON: {exc.msg}") from None
            if isinstance(obj, dict) and "input_ids" in obj:
                yield Document(input_ids=list(obj["input_ids"]))
            elif isinstance(obj, dict) and text_column in obj:
                yield Document(text=str(obj[text_column]))
            else:
                raise InvalidInputError(
                    f"{file}:{lineno} has no field {text_column!r} (nor 'input_ids'); pass --text-column NAME"
                )


def _iter_hf(path: Path, text_column: str) -> Iterator[Document]:
    import datasets

    ds: Any = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    column = "input_ids" if "input_ids" in ds.column_names else text_column
    if column not in ds.column_names:
        raise InvalidInputError(
            f"Hugging Face dataset at {path} has no column {text_column!r} (columns: {ds.column_names}); "
            "pass --text-column NAME"
        )
    for batch in ds.select_columns([column]).iter(batch_size=1024):
        for value in batch[column]:
            yield Document(input_ids=list(value)) if column == "input_ids" else Document(text=str(value))


@dataclass(frozen=True)
class PackedCorpus:
    """Sequences on disk: ``tokens[offsets[i]:offsets[i+1]]`` is sequence i."""

    directory: Path
    num_sequences: int
    num_tokens: int
    fingerprint: str

    def open(self) -> SequenceReader:
        return SequenceReader(self.directory)


class SequenceReader:
    """Read-only memory map of a packed corpus."""

    def __init__(self, directory: Path):
        self.offsets = np.load(directory / OFFSETS_NAME, mmap_mode="r")
        total = int(self.offsets[-1]) if len(self.offsets) else 0
        self.tokens = (
            np.memmap(directory / TOKENS_NAME, dtype="<i4", mode="r", shape=(total,)) if total else np.zeros(0, "<i4")
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])], dtype=np.int32)


def pack_corpus(
    documents: Iterator[Document],
    tokenize: Callable[[str], list[int]],
    directory: Path,
    *,
    seq_len: int,
    eos_id: int | None,
    pack: bool = True,
    id_limit: int | None = None,
) -> PackedCorpus:
    """Tokenize and pack ``documents`` into ``directory``; returns the sequence count and a content fingerprint.

    ``id_limit``: token ids must be below it (the teacher's logit dimension); a pre-tokenized id at or above it
    is refused with the document number.
    """
    if seq_len < 1:
        raise InvalidInputError(f"seq_len must be >= 1, got {seq_len}")
    if pack and eos_id is None:
        raise InvalidInputError("packing joins documents with EOS, but the tokenizer has no eos token; use --no-pack")
    directory.mkdir(parents=True, exist_ok=True)
    tmp_tokens = directory / (TOKENS_NAME + ".partial")
    offsets = [0]
    h = hashlib.sha256(f"seq_len={seq_len};pack={pack}".encode())
    buffer: list[int] = []
    total = 0
    with open(tmp_tokens, "wb") as out:

        def emit(seq: list[int]) -> None:
            nonlocal total
            arr = np.asarray(seq, dtype="<i4")
            out.write(arr.tobytes())
            h.update(arr.tobytes())
            total += len(seq)
            offsets.append(total)

        for n, doc in enumerate(documents):
            ids = list(doc.input_ids) if doc.input_ids is not None else tokenize(doc.text or "")
            if ids and id_limit is not None and (min(ids) < 0 or max(ids) >= id_limit):
                bad = next(i for i in ids if i < 0 or i >= id_limit)
                raise InvalidInputError(
                    f"document {n} holds token id {bad}, outside the teacher's vocabulary [0, {id_limit}); "
                    "was the corpus tokenized with another tokenizer?"
                )
            if not pack:
                if ids:
                    emit(ids[:seq_len])
                continue
            if not ids:
                continue
            buffer.extend(ids)
            buffer.append(eos_id)  # type: ignore[arg-type]
            start = 0  # cut by offset: deleting from the front each time is quadratic in a long document
            while len(buffer) - start >= seq_len:
                emit(buffer[start : start + seq_len])
                start += seq_len
            del buffer[:start]
        if pack and buffer:
            emit(buffer)
        out.flush()
        os.fsync(out.fileno())
    if total == 0:
        tmp_tokens.unlink()
        raise InvalidInputError("the corpus is empty: no document produced a single token")
    os.replace(tmp_tokens, directory / TOKENS_NAME)
    buf = io.BytesIO()
    np.save(buf, np.asarray(offsets, dtype=np.int64))
    write_atomic(directory / OFFSETS_NAME, buf.getvalue())
    corpus = PackedCorpus(directory, len(offsets) - 1, total, h.hexdigest())
    meta = {"num_sequences": corpus.num_sequences, "num_tokens": total, "fingerprint": corpus.fingerprint}
    write_atomic(directory / CORPUS_META, json.dumps(meta).encode())  # last: its presence means "packed"
    return corpus


def load_packed(directory: Path) -> PackedCorpus | None:
    """A corpus packed by an earlier run of the same job, or None."""
    meta = directory / CORPUS_META
    if not meta.exists() or not (directory / TOKENS_NAME).exists() or not (directory / OFFSETS_NAME).exists():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # torn by a crash: pack again
    return PackedCorpus(directory, data["num_sequences"], data["num_tokens"], data["fingerprint"])
