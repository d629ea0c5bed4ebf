"""``logitstore demo``: the precompute path end to end on real text, with nothing downloaded.

1. Corpus: the prose of the Python documentation shipped with the interpreter (``pydoc_data.topics``).
2. Tokenizer: a byte-level BPE trained here with Hugging Face ``tokenizers``.
3. Teacher: a small Llama built from a config and saved as an ordinary Hugging Face checkpoint, so the job runs the
   same code path a user's own teacher would. (It is not trained yet: training it, the service and the student
   runs join this demo with the end-to-end issue.)
4. ``precompute`` on an embedded Ray into a store: a top-k cache and a sample cache, then verify, inspect and a
   content lookup. A rerun reuses whatever is already built.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_WORKDIR = Path(".demo")


def _corpus(workdir: Path) -> Path:
    import pydoc_data.topics

    path = workdir / "corpus.jsonl"
    if not path.exists():
        docs = [text.strip() for _, text in sorted(pydoc_data.topics.topics.items()) if text.strip()]
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _teacher(workdir: Path, corpus: Path, vocab: int) -> Path:
    from logitstore.workers.checkpoints import save_llama, train_bpe_tokenizer

    directory = workdir / "teacher"
    if (directory / "config.json").exists():
        return directory
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tokenizer = train_bpe_tokenizer(texts, vocab)
    tmp = directory.with_name("teacher.partial")
    # peaked distributions, like a trained model's
    save_llama(tmp, vocab_size=len(tokenizer), hidden_size=128, num_layers=2, max_positions=1024, head_scale=20.0)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def run_demo(workdir: Path = DEFAULT_WORKDIR, *, quick: bool = False) -> None:
    from logitstore import open_dataset
    from logitstore.errors import DatasetExistsError
    from logitstore.inspect import format_summary, summarize
    from logitstore.verify import verify_dataset
    from logitstore.workers import precompute

    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] corpus: Python documentation prose -> {workdir / 'corpus.jsonl'}")
    corpus = _corpus(workdir)
    print("[2/4] tokenizer + teacher: BPE trained here, Llama saved as a Hugging Face checkpoint")
    teacher = _teacher(workdir, corpus, vocab=1000 if quick else 4000)
    seq_len = 128 if quick else 256
    caches = {"topk32": {"method": "topk", "k": 32}, "sample32": {"method": "sample", "n": 32, "seed": 0}}
    for step, (name, spec) in enumerate(caches.items(), start=3):
        out = workdir / "store" / name
        print(f"[{step}/4] precompute {name} on embedded Ray -> {out}")
        try:
            result = precompute(
                teacher=str(teacher),
                data=str(corpus),
                out=str(out),
                seq_len=seq_len,
                batch_size=4,
                backend="parquet" if name == "topk32" else "zarr",
                **spec,
            )
            print(result.summary())
        except DatasetExistsError:
            print("  already built; reusing it")
        report = verify_dataset(out)
        print(f"  verify: {'OK' if report.ok else report.problems} ({report.sequences_checked} sequences)")
    ds = open_dataset(workdir / "store" / "topk32")
    record = ds[len(ds) // 2]
    found = ds.get_by_tokens(record.input_ids)
    print("\n" + format_summary(summarize(workdir / "store" / "topk32")))
    print(
        f"\ncontent lookup: key {record.key.hex()} -> seq_id {found.seq_id}; position 0 keeps ids "
        f"{record.ids[: record.nnz[0]][:8].tolist()}... with logprobs "
        f"{[round(float(x), 3) for x in record.logprobs[:3]]}..."
    )
    print(f"\nDone. The caches are in {workdir / 'store'}; try `logitstore inspect {workdir / 'store' / 'sample32'}`.")
