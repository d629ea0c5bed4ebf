"""The demo's corpus: English prose that ships with the interpreter, so nothing is downloaded.

The Python documentation's topics (``pydoc_data.topics``) and the docstrings of the standard library's own source
files (read with :mod:`ast`, never imported), in a fixed order, split into train and held-out documents by a hash
of their text (so the split does not depend on the order or the size cap).
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

#: standard-library folders whose docstrings are code-heavy or test fixtures rather than prose
SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__")
MIN_CHARS = 200
HELD_OUT_EVERY = 20  # about 5% of documents


def documents() -> Iterator[str]:
    """Documentation topics, then stdlib docstrings of at least ``MIN_CHARS`` characters, each once."""
    import pydoc_data.topics

    seen: set[str] = set()
    texts = (text for _, text in sorted(pydoc_data.topics.topics.items()))
    for text in (*texts, *_stdlib_docstrings()):
        text = text.strip()
        if len(text) >= MIN_CHARS and text not in seen:
            seen.add(text)
            yield text


def _stdlib_docstrings() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if any(part in SKIP for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def is_held_out(text: str) -> bool:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()[0] % HELD_OUT_EVERY == 0


def build_corpus(workdir: Path, *, max_chars: int) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` (``{"text": ...}`` per line) of at most ``max_chars`` in all;
    reuse them when they exist."""
    train, heldout = workdir / "corpus" / "train.jsonl", workdir / "corpus" / "heldout.jsonl"
    if train.exists() and heldout.exists():
        return train, heldout
    train.parent.mkdir(parents=True, exist_ok=True)
    parts: dict[bool, list[str]] = {False: [], True: []}
    total = 0
    for text in documents():
        if total + len(text) > max_chars:
            break
        parts[is_held_out(text)].append(json.dumps({"text": text}) + "\n")
        total += len(text)
    for path, lines in ((heldout, parts[True]), (train, parts[False])):  # train last: its presence means done
        tmp = path.with_suffix(".partial")
        tmp.write_text("".join(lines))
        tmp.rename(path)
    return train, heldout


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]
