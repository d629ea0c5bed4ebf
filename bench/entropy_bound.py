"""How many bytes per token an ideal order-0 entropy coder would need for issue 2's byte targets, beside what the
library stores, on the same records (synthetic teacher of ``bench/storage.py``, compact encoding).

Run from the repository root::

    .venv/bin/python bench/entropy_bound.py                  # V = 32,000, 32,768 tokens (~1 minute)
    .venv/bin/python bench/entropy_bound.py --vocab 151936

The targets (top-k 128 <= 200 B/token, sample n=50 <= 25 B/token) are compared with the information the records
hold under models that know every id's frequency, every count's and every code's distribution (estimated from the
records themselves: plug-in entropies, which err *low* on a finite sample, so the estimate favours the targets):

- **ids as a set**: position t's ids as k membership bits over the vocabulary, each id ``i`` coded with its own
  probability ``q_i`` of being kept at a position (``sum_i H_b(q_i)`` bits per position). An ideal arithmetic coder
  with this model needs that; a coder that also knew how ids co-occur could need less, which is why this is an
  estimate of what per-id coding can reach, not a bound for every conceivable coder.
- **top-k logprob codes** (q16 at the 0.02-nat bound): the sorted codes (first code, then gaps, each order-0), plus
  which id holds which code: ``log2(k! / prod m_c!)`` bits per position for ``m_c`` ids sharing code ``c``
  (exact, no estimate). Together with the set that is the whole record.
- **sample**: the set, then each kept id's count (order-0) and its logprob code given its count (the code's
  plug-in entropy conditional on the count: a count says roughly how probable the id is).
- **everything else** (lse, input_ids, nnz, per-sequence columns, footers, key index): the bytes the library stores
  for them (``bench/storage.py``'s per-column sizes of a Parquet dataset written from the same records).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storage  # noqa: E402

import logitstore  # noqa: E402
from logitstore import codec  # noqa: E402

TARGETS = {"topk128": 200.0, "sample50": 25.0}
#: The Parquet columns that hold entries (format_version 2 adds the ids' raw low plane and the nibbles' escapes).
ENTRY_COLUMNS = ("ids", "ids_raw", "logprobs", "logprobs_escapes", "counts")


def entropy_bits(values: np.ndarray) -> float:
    """Plug-in (order-0) entropy of ``values`` in bits per value."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def conditional_entropy_bits(values: np.ndarray, given: np.ndarray) -> float:
    """Plug-in ``H(values | given)`` in bits per value."""
    total = 0.0
    for g in np.unique(given):
        sel = values[given == g]
        total += sel.size * entropy_bits(sel)
    return total / values.size


def set_bits(ids: np.ndarray, positions: int, vocab: int) -> float:
    """Bits for the sets of kept ids of ``positions`` positions, each id a membership bit with its own frequency."""
    q = np.bincount(ids, minlength=vocab) / positions
    q = q[(q > 0) & (q < 1)]
    return float(-(q * np.log2(q) + (1 - q) * np.log2(1 - q)).sum()) * positions


def assignment_bits(codes: np.ndarray) -> float:
    """``sum_t log2(k! / prod_c m_c!)`` for ``codes [T, k]``: which of a position's ids holds which code."""
    t, k = codes.shape
    s = np.sort(codes, axis=1)
    starts = np.ones_like(s, dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    run_ids = np.cumsum(starts.ravel())  # one id per run of equal codes in a row
    run_lengths = np.bincount(run_ids)[1:]
    log_factorial = np.array([math.lgamma(n + 1) for n in range(k + 1)])
    return float(t * log_factorial[k] - log_factorial[run_lengths].sum()) / math.log(2)


def measure(name: str, records: list[logitstore.Record], spec: logitstore.Spec, vocab: int, workdir: Path) -> dict:
    tokens = sum(len(r) for r in records)
    root = workdir / name
    teacher = logitstore.TeacherInfo(name="synthetic", vocab_size=vocab)
    with logitstore.DatasetWriter(root, spec=spec, teacher=teacher, backend="parquet") as w:
        for r in records:
            w.write(r)
    stored = storage.column_bytes(root, "parquet")
    other = sum(v for c, v in stored.items() if c not in ENTRY_COLUMNS)
    ids = np.concatenate([r.ids for r in records]).astype(np.int64)
    codes = codec._q16_encode(np.concatenate([r.logprobs for r in records]), spec).astype(np.int64)
    parts: dict[str, float] = {"ids as a set": set_bits(ids, tokens, vocab)}
    if spec.method == "topk":
        grid = codes.reshape(tokens, spec.k)  # rank order: descending logprob = ascending code
        parts["sorted codes (first + gaps)"] = tokens * (
            entropy_bits(grid[:, 0]) + (spec.k - 1) * entropy_bits(np.diff(grid, axis=1).ravel())
        )
        parts["which id holds which code"] = assignment_bits(grid)
        rank_order_ids = ids.size * entropy_bits(ids)  # for comparison: ids one by one, as the library orders them
    else:
        counts = np.concatenate([r.counts for r in records]).astype(np.int64)  # type: ignore[misc]
        parts["counts"] = counts.size * entropy_bits(counts)
        parts["codes given counts"] = codes.size * conditional_entropy_bits(codes, counts)
        rank_order_ids = float("nan")
    ideal_entries = sum(parts.values()) / 8 / tokens
    stored_entries = sum(stored.get(c, 0) for c in ENTRY_COLUMNS) / tokens
    return {
        "configuration": name,
        "tokens": tokens,
        "entries per position": ids.size / tokens,
        "stored B/token": (other / tokens) + stored_entries,
        "stored entry columns B/token": stored_entries,
        "other columns B/token": other / tokens,
        "ideal entry bits per entry": {k: v / ids.size for k, v in parts.items()},
        "ideal entry columns B/token": ideal_entries,
        "ideal B/token": ideal_entries + other / tokens,
        "ids one by one (order-0) bits per entry": rank_order_ids / ids.size,
        "target B/token": TARGETS[name],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--tokens", type=int, default=32_768)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=storage.OUT_DIR)
    args = ap.parse_args(argv)
    if args.tokens < args.seq_len or args.vocab < 256:
        ap.error(f"need --tokens >= --seq-len and --vocab >= 256, got {args.tokens}, {args.seq_len}, {args.vocab}")
    cpus = storage.allowed_cpus()
    vd = storage.build_vocab_data(
        args.vocab,
        args.tokens // args.seq_len,
        args.seq_len,
        args.seed,
        512,
        lambda msg: print(msg, file=sys.stderr),
        jobs=min(2, len(cpus)),
        cpus=cpus,
        teacher_kwargs={},
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in TARGETS:
            spec = logitstore.Spec(**storage.METHODS[name], seed=args.seed, encoding=logitstore.COMPACT)
            rows.append(measure(name, vd.methods[name].records, spec, args.vocab, Path(tmp)))
    print(f"V={args.vocab}, {rows[0]['tokens']} tokens, synthetic teacher; bytes per token")
    print("| configuration | target | stored | ideal order-0 coder | of which entries: stored / ideal | rest |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['configuration']} | {r['target B/token']:.0f} | {r['stored B/token']:.1f} | "
            f"{r['ideal B/token']:.1f} | {r['stored entry columns B/token']:.1f} / "
            f"{r['ideal entry columns B/token']:.1f} | {r['other columns B/token']:.1f} |"
        )
    for r in rows:
        bits = ", ".join(f"{k} {v:.2f}" for k, v in r["ideal entry bits per entry"].items())
        print(f"{r['configuration']}: ideal bits per entry: {bits}; {r['entries per position']:.2f} entries/position")
        if r["configuration"] == "topk128":
            print(
                "  (ids one by one, order-0, as stored in rank order: "
                f"{r['ids one by one (order-0) bits per entry']:.2f} bits)"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"entropy_bound_{args.vocab}.json").write_text(
        json.dumps({"vocab": args.vocab, "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
