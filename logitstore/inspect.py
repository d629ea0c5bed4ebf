"""``inspect``: a one-screen summary of a dataset's manifest and statistics."""

from __future__ import annotations

import os
from typing import Any

from logitstore.dataset import Dataset


def summarize(location: str | os.PathLike[str]) -> dict[str, Any]:
    """The facts a user checks first about a dataset, as plain JSON-able values."""
    m = Dataset(location).manifest
    stats = m.stats
    assert stats is not None
    total_bytes = sum(s.nbytes for s in m.shards) + m.key_index.nbytes
    return {
        "name": m.name,
        "location": os.fspath(location),
        "created_at": m.created_at,
        "format_version": m.format_version,
        "backend": m.backend,
        "teacher": m.teacher.to_dict(),
        "tokenizer": m.tokenizer.to_dict(),
        "spec": m.spec.to_dict(),
        "method": m.spec.describe(),
        "sequences": m.num_sequences,
        "tokens": m.num_tokens,
        "shards": len(m.shards),
        "bytes": total_bytes,
        "bytes_per_token": stats.bytes_per_token,
        "mean_entries_per_position": stats.mean_entries_per_position,
        "mean_kept_mass": stats.mean_kept_mass,
    }


def format_summary(s: dict[str, Any]) -> str:
    enc = s["spec"]["encoding"]
    encoding = (
        "lossless (float32)" if enc["logprobs"] == "float32" else f"q16, logprob error <= {enc['error_bound']} nats"
    )
    tok = s["tokenizer"]
    rows = [
        ("dataset", f"{s['name']}  ({s['location']})"),
        ("created", s["created_at"]),
        (
            "teacher",
            f"{s['teacher']['name']}  logit dim {s['teacher']['vocab_size']:,}"
            + (f", {s['teacher']['dtype']}" if s["teacher"].get("dtype") else ""),
        ),
        ("tokenizer", f"{tok.get('name') or '-'}  vocab {tok['vocab_size']:,}" if tok.get("vocab_size") else "-"),
        ("method", f"{s['method']}  seed {s['spec'].get('seed', 0)}"),
        ("encoding", f"{encoding}  backend {s['backend']}"),
        ("sequences", f"{s['sequences']:,} in {s['shards']} shard(s)"),
        ("tokens", f"{s['tokens']:,}"),
        ("size", f"{s['bytes'] / 2**20:,.2f} MiB  {s['bytes_per_token']:.1f} bytes/token"),
        ("entries", f"{s['mean_entries_per_position']:.2f} per position"),
        ("kept mass", f"{s['mean_kept_mass']:.4f} mean teacher probability stored per position"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
