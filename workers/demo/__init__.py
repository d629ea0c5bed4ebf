"""``logitstore demo``: the whole product on real text, with nothing downloaded.

1. Corpus: the prose of the Python documentation and the standard library's docstrings (:mod:`.corpus`), split
   into train and held-out documents.
2. Tokenizer and teacher: a byte-level BPE trained here, and a small Llama trained for a few minutes on the CPU,
   saved as an ordinary Hugging Face checkpoint, so the rest runs the code path a user's own teacher would.
3. ``precompute`` on an embedded Ray into a store: a top-k cache and a sample cache, each verified.
4. The service in the background on 127.0.0.1, and a few REST queries.
5. Two students from one initialization, trained for the same steps on the same batches: cross-entropy only, and
   KD from the sample cache streamed through the service. Held-out CE and KL to the teacher side by side.
6. ``logitstore report`` for both caches (the top-k one with 1% of positions kept dense as an audit, so the report
   shows what other k / n would keep).

A rerun reuses every finished artifact; Ctrl-C stops it (the service too).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitstore.workers.demo.corpus import build_corpus, read_texts

DEFAULT_WORKDIR = Path(".demo")
STAGES = 6


@dataclass(frozen=True)
class Budget:
    """Sizes of one demo run (``quick`` for the test suite)."""

    max_chars: int
    vocab_size: int
    seq_len: int
    teacher_hidden: int
    teacher_layers: int
    teacher_steps: int
    student_hidden: int
    student_layers: int
    student_steps: int
    batch_size: int


FULL = Budget(2_000_000, 8000, 128, 256, 4, 500, 128, 2, 300, 16)
QUICK = Budget(250_000, 1000, 64, 64, 2, 30, 32, 1, 20, 8)
#: the top-k cache also keeps 1% of positions dense (``--audit-fraction``), so its report shows what other k / n
#: would keep on this teacher
CACHES = {
    "topk32": {"method": "topk", "k": 32, "backend": "parquet", "audit_fraction": 0.01},
    "sample32": {"method": "sample", "n": 32},
}


def _stage(n: int, text: str) -> None:
    print(f"\n[{n}/{STAGES}] {text}", flush=True)


def build_teacher(workdir: Path, train: Path, budget: Budget) -> Path:
    """Train the demo teacher (tokenizer + Llama) on ``train`` into ``workdir/teacher``; reuse it when it exists."""
    from logitstore.workers.checkpoints import train_bpe_tokenizer
    from logitstore.workers.demo import training

    directory = workdir / "teacher"
    if (directory / "config.json").exists():
        print(f"  {directory} already built; reusing it")
        return directory
    texts = read_texts(train)
    tokenizer = train_bpe_tokenizer(texts, budget.vocab_size)
    rows = training.pack(
        tokenizer(texts, add_special_tokens=False)["input_ids"], seq_len=budget.seq_len, eos_id=tokenizer.eos_token_id
    )
    print(f"  tokenizer: {len(tokenizer)} ids; {rows.numel():,} training tokens")
    from transformers import LlamaForCausalLM

    config = training.llama_config(
        len(tokenizer),
        hidden_size=budget.teacher_hidden,
        num_layers=budget.teacher_layers,
        max_positions=max(1024, budget.seq_len),
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    batches = training.row_batches(rows, budget.batch_size, seed=0)
    training.fit(model, batches, training.lm_loss, steps=budget.teacher_steps, lr=3e-3, desc="train teacher")
    tmp = directory.with_name("teacher.partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def _caches(workdir: Path, teacher: Path, train: Path, budget: Budget) -> Path:
    from logitstore.errors import DatasetExistsError
    from logitstore.verify import verify_dataset
    from logitstore.workers import precompute

    store = workdir / "store"
    for name, options in CACHES.items():
        out = store / name
        print(f"  {name} -> {out}")
        try:
            result = precompute(
                teacher=str(teacher), data=str(train), out=str(out), seq_len=budget.seq_len, batch_size=8, **options
            )
            print("  " + result.summary().replace("\n", "\n  "))
        except DatasetExistsError:
            print("  already built; reusing it")
        report = verify_dataset(out)
        print(f"  verify: {'OK' if report.ok else report.problems} ({report.sequences_checked} sequences)")
    return store


def _queries(url: str, store: Path) -> None:
    from logitstore import open_dataset
    from logitstore.client import Client

    with Client(url) as client:
        for d in client.datasets():
            print(
                f"  GET /v1/datasets -> {d['name']}: {d['sequences']:,} sequences, {d['bytes_per_token']:.1f} B/token"
            )
        record = client.sequence("topk32", 3, start=0, stop=2)
        ids, logprobs = record.ids[: record.nnz[0]][:6].tolist(), [round(float(x), 2) for x in record.logprobs[:3]]
        print(
            f"  GET /v1/datasets/topk32/sequences/3?start=0&stop=2 -> position 0 keeps ids {ids}... logprobs {logprobs}"
        )
        tokens = open_dataset(store / "sample32")[7].input_ids
        matches, found = client.lookup(tokens)
        print(f"  POST /v1/lookup ({len(tokens)} token ids) -> {matches} (lse[0] = {float(found.lse[0]):.3f})")


def _students(workdir: Path, teacher_dir: Path, heldout: Path, url: str, budget: Budget) -> dict[str, dict[str, Any]]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from logitstore.workers.demo import training

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    rows = training.pack(
        tokenizer(read_texts(heldout), add_special_tokens=False)["input_ids"],
        seq_len=budget.seq_len,
        eos_id=tokenizer.eos_token_id,
    )
    init = workdir / "students" / "init"
    if not init.exists():
        init.parent.mkdir(parents=True, exist_ok=True)
        config = training.llama_config(
            len(tokenizer), hidden_size=budget.student_hidden, num_layers=budget.student_layers, max_positions=1024
        )
        training.save_initialized(init, config, seed=1)
    runs = {
        "CE only": (workdir / "store" / "sample32", {"ce_weight": 1.0}),
        "KD (sample32, via the service)": (f"{url}/v1/datasets/sample32", {}),
    }
    results: dict[str, dict[str, Any]] = {}
    for i, (name, (source, loss_options)) in enumerate(runs.items()):
        out = workdir / "students" / f"student{i}.json"
        if out.exists():
            results[name] = json.loads(out.read_text())
            print(f"  {name}: already trained; reusing its results")
            continue
        model, info = training.train_student(
            init,
            source,
            loss_options,
            steps=budget.student_steps,
            batch_size=budget.batch_size,
            desc=name,
            tokenizer=tokenizer,
        )
        results[name] = {**training.evaluate(model, teacher, rows), **info}
        out.write_text(json.dumps(results[name], indent=1))
    results["teacher"] = {**training.evaluate(teacher, teacher, rows), "steps": budget.teacher_steps}
    return results


def _reports(workdir: Path, store: Path) -> None:
    from logitstore.report import build_report

    for name in CACHES:
        out = workdir / "report" / name
        index = out / "index.html"
        if not index.exists():
            build_report(store / name, out)
        print(f"  {name}: open {index} (or `logitstore report {store / name} --out DIR`)")


def run_demo(workdir: Path = DEFAULT_WORKDIR, *, quick: bool = False) -> dict[str, dict[str, Any]]:
    """Run every stage (see the module docstring); returns the students' held-out results."""
    from transformers.utils import logging as hf_logging

    from logitstore.workers.demo.service import background_service

    hf_logging.disable_progress_bar()  # the demo's own bars say what is happening
    budget = QUICK if quick else FULL
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _stage(1, "corpus: Python documentation prose and standard-library docstrings")
    train, heldout = build_corpus(workdir, max_chars=budget.max_chars)
    print(f"  {len(read_texts(train))} train / {len(read_texts(heldout))} held-out documents in {train.parent}")
    _stage(2, "tokenizer + teacher: BPE trained here, a small Llama trained on the CPU, saved as a HF checkpoint")
    teacher = build_teacher(workdir, train, budget)
    _stage(3, "precompute on embedded Ray: a top-k cache and a sample cache")
    store = _caches(workdir, teacher, train, budget)
    _stage(4, "the service in the background (logitstore serve), and some REST queries")
    with background_service(store, workdir / "serve.log") as url:
        print(f"  serving {store} on {url} (log: {workdir / 'serve.log'})")
        _queries(url, store)
        _stage(5, "two students, same init, same batches, same steps: CE only vs KD streamed through the service")
        results = _students(workdir, teacher, heldout, url, budget)
    print(f"\n  {'':32}{'held-out CE':>12}{'KL(teacher || model)':>22}")
    for name, r in results.items():
        print(f"  {name:32}{r['ce']:>12.3f}{r['kl']:>22.3f}")
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    _stage(6, "logitstore report for both caches")
    _reports(workdir, store)
    print(f"\nDone in {time.monotonic() - started:.0f} s. Caches: {store}; results: {workdir / 'results.json'}.")
    return results
