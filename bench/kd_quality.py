"""Distillation quality: which cached targets a student can trust, measured on the demo teacher.

Run from the repository root::

    .venv/bin/python bench/kd_quality.py                          # or: make bench-kd
    .venv/bin/python bench/kd_quality.py --teacher .demo/teacher  # reuse a teacher built by `logitstore demo`
    .venv/bin/python bench/kd_quality.py --quick --out /tmp/kdq   # the reduced pipeline the test suite runs

1. The demo's corpus and teacher (trained here with the demo's FULL budget unless ``--teacher`` names one), and
   a training subset of about ``train_tokens`` tokens, so a dense cache of the 8,000-id vocabulary stays ~1.5 GB.
2. Caches of that subset through ``logitstore.workers.precompute``: dense (the reference), top-k 8/32/128, top-p
   (0.95, k <= 100), sample n = 16 / 50, sample n = 50 with proposal temperature 1.5, and top-k 32 with the logit
   statistics (``--logit-stats``). All store ``label_logprob`` (the precompute default). Same shard layout for all.
3. Identical students (one saved initialization, seed, steps, learning rate, batch size and fixed loader blocks,
   so every run reads the same batches in the same order) trained with ``LogitLoader`` + ``kd_loss`` on each
   (every kind: the divergences with their tails, NKD, logit-standardized KD, SEL, ULD), and one on cross-entropy
   only (``ce_weight=1`` on the same loader).
4. Held-out CE, KL(teacher || student), ECE (15 bins, top-1), the share of the CE-only -> full-KD gap closed, and
   at one fixed student state (the trained CE-only student) each run's loss gradient against the same loss on the
   dense cache (forward KL for the divergences) on the same fixed batches: cosine and norm ratio per batch (one
   training step, one draw of each sampled position) and of the gradient summed over the batches.
5. Cross-tokenizer alignment cost: the training subset's sequences re-tokenized for a student BPE of half the
   teacher's vocabulary (``logitstore.align.TokenizerAligner``): paired fraction of student positions and
   milliseconds per 1,000 teacher tokens.

Everything lands in ``--out`` (default ``bench/out/kd_quality``): teacher, caches, students' JSON, ``results.json``
and ``kd_quality.md``. A rerun reuses every finished artifact, so a crashed run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "bench" / "out" / "kd_quality"


@dataclass(frozen=True)
class Setup:
    """Sizes of one bench run; the model sizes come from the demo's budget."""

    demo: str  # "full" | "quick": the demo budget for corpus, tokenizer, teacher and student sizes
    train_tokens: int  # the training subset the caches cover
    steps: int  # per student
    batch_size: int
    lr: float
    block_size: int  # loader blocks (sequences): fixed, so every cache yields the same batches
    sequences_per_shard: int
    grad_batches: int  # fixed batches for the gradient comparison


FULL_SETUP = Setup("full", 100_000, 150, 16, 3e-3, 8, 256, 4)
QUICK_SETUP = Setup("quick", 6_000, 6, 8, 3e-3, 4, 32, 2)

#: store name -> precompute options (compact encoding: q16 logprobs, as users would store them)
CACHES: dict[str, dict[str, Any]] = {
    "dense": {"method": "dense"},
    "topk8": {"method": "topk", "k": 8},
    "topk32": {"method": "topk", "k": 32},
    "topk128": {"method": "topk", "k": 128},
    "topp95": {"method": "topp", "p": 0.95, "k": 100},
    "sample16": {"method": "sample", "n": 16},
    "sample50": {"method": "sample", "n": 50},
    "sample50-t1.5": {"method": "sample", "n": 50, "proposal_temperature": 1.5},
    "topk32-stats": {"method": "topk", "k": 32, "logit_stats": True},
}

#: student run -> (cache, kd_loss options). No CE mixed in (ce_weight 0) except the CE-only baseline; each
#: loss at its authors' setting where they give one (NKD gamma 1.5, tau 1; standardized KD tau 2; ULD tau 1).
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    # any cache gives the same batches (check_same_order); the cheapest one keeps CE-only from decoding 8,000 ids
    "CE only": ("topk8", {"ce_weight": 1.0}),
    "full KD (dense)": ("dense", {}),
    "top-k 8 (ghost)": ("topk8", {"tail": "ghost"}),
    "top-k 8 (renorm)": ("topk8", {"tail": "renorm"}),
    "top-k 32 (ghost)": ("topk32", {"tail": "ghost"}),
    "top-k 128 (ghost)": ("topk128", {"tail": "ghost"}),
    "top-p 0.95, k<=100 (ghost)": ("topp95", {"tail": "ghost"}),
    "sample n=16": ("sample16", {}),
    "sample n=50": ("sample50", {}),
    "sample n=50, tau_q=1.5": ("sample50-t1.5", {}),
    "top-k 8 (label)": ("topk8", {"tail": "label"}),
    "top-k 32 (label)": ("topk32", {"tail": "label"}),
    "NKD (dense)": ("dense", {"kind": "nkd"}),
    "NKD, top-k 32 (ghost)": ("topk32", {"kind": "nkd"}),
    "standardized KD (dense)": ("dense", {"kind": "standardized_kd", "temperature": 2.0}),
    "standardized KD, top-k 32 +stats": ("topk32-stats", {"kind": "standardized_kd", "temperature": 2.0}),
    "SEL, sample n=50 draws": ("sample50", {"kind": "sel", "source": "draws"}),
    "SEL, label only (top-k 8 cache)": ("topk8", {"kind": "sel", "source": "label"}),
    "ULD (dense)": ("dense", {"kind": "uld"}),
    "ULD, top-k 32": ("topk32", {"kind": "uld"}),
    # the two losses their papers only use beside CE, at those papers' mixes: CE + 9 KD and CE + 1.5 ULD
    "standardized KD + CE (dense)": ("dense", {"kind": "standardized_kd", "temperature": 2.0, "ce_weight": 0.1}),
    "standardized KD + CE, top-k 32 +stats": (
        "topk32-stats",
        {"kind": "standardized_kd", "temperature": 2.0, "ce_weight": 0.1},
    ),
    "ULD + CE (dense)": ("dense", {"kind": "uld", "ce_weight": 0.4}),
    "ULD + CE, top-k 32": ("topk32", {"kind": "uld", "ce_weight": 0.4}),
}
REFERENCE, BASELINE = "full KD (dense)", "CE only"
MINIBATCH_NOISE = "full KD, batch vs next batch"


def budget(setup: Setup) -> Any:
    from logitstore.workers.demo import FULL, QUICK

    return QUICK if setup.demo == "quick" else FULL


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- 1. corpus, teacher, training subset -------------------------------------------------------------------------


def teacher_and_corpus(out: Path, setup: Setup, teacher: Path | None) -> tuple[Path, Path, Path]:
    """The demo corpus (train/held-out JSONL) and teacher directory: ``teacher`` if given, else trained here with
    the demo's code and budget (reused on rerun)."""
    from logitstore.workers.demo import build_teacher
    from logitstore.workers.demo.corpus import build_corpus

    train, heldout = build_corpus(out, max_chars=budget(setup).max_chars)
    if teacher is None:
        started = time.monotonic()
        teacher = build_teacher(out, train, budget(setup))
        print(f"  teacher: {teacher} ({time.monotonic() - started:.0f} s)")
    return train, heldout, teacher


def training_subset(train: Path, tokenizer: Any, path: Path, *, tokens: int) -> Path:
    """The first train documents holding about ``tokens`` tokens, as JSONL at ``path`` (reused when present)."""
    if path.exists():
        return path
    lines, total = [], 0
    for line in train.read_text().splitlines():
        if total >= tokens:
            break
        total += len(tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]) + 1
        lines.append(line + "\n")
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(lines))
    tmp.rename(path)
    return path


# -- 2. caches ---------------------------------------------------------------------------------------------------


def build_caches(store: Path, teacher: Path, data: Path, setup: Setup) -> dict[str, dict[str, Any]]:
    """Every cache of :data:`CACHES` over ``data`` (reused when complete), two jobs at a time on the running Ray
    (each job's fixed cost, starting an actor that loads the teacher, overlaps another's work); per cache:
    bytes/token, entries per position, kept mass, precompute seconds."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(build_cache, store / name, teacher, data, setup, options)
            for name, options in CACHES.items()
        }
        info = {name: future.result() for name, future in futures.items()}
    for name, c in info.items():
        seconds = "reused" if c["precompute_seconds"] is None else f"{c['precompute_seconds']} s"
        print(
            f"  {name:14s} {c['bytes_per_token']:9.1f} B/token  {c['entries_per_position']:8.1f} entries/position  "
            f"kept mass {c['kept_mass']:.4f}  ({seconds})",
            flush=True,
        )
    return info


def build_cache(out: Path, teacher: Path, data: Path, setup: Setup, options: dict[str, Any]) -> dict[str, Any]:
    """One cache through ``precompute`` (or the complete one already at ``out``) and its manifest's figures."""
    from logitstore import open_dataset
    from logitstore.errors import DatasetExistsError
    from logitstore.workers import precompute

    started = time.monotonic()
    try:
        precompute(
            teacher=str(teacher),
            data=str(data),
            out=str(out),
            seq_len=budget(setup).seq_len,
            sequences_per_shard=setup.sequences_per_shard,
            progress=False,
            **options,
        )
        seconds: float | None = round(time.monotonic() - started, 1)
    except DatasetExistsError:
        seconds = None  # built by an earlier run
    m = open_dataset(out).manifest
    assert m.stats is not None
    return {
        "bytes_per_token": m.stats.bytes_per_token,
        "entries_per_position": m.stats.mean_entries_per_position,
        "kept_mass": m.stats.mean_kept_mass,
        "tokens": m.num_tokens,
        "sequences": m.num_sequences,
        "precompute_seconds": seconds,
    }


def check_same_order(store: Path, setup: Setup) -> None:
    """Every cache must give the loader the same blocks and sequences, hence the same batches for one seed."""
    from logitstore.torch import LogitDataset

    orders = {
        name: (d.num_sequences, d.blocks)
        for name in CACHES
        for d in [
            LogitDataset(store / name, batch_size=setup.batch_size, block_size=setup.block_size, rank=0, world_size=1)
        ]
    }
    if len(set(orders.values())) != 1:
        raise RuntimeError(f"caches would be read in different orders (sequences, blocks): {orders}")


# -- 3. students ---------------------------------------------------------------------------------------------------


def heldout_rows(heldout: Path, tokenizer: Any, setup: Setup) -> torch.Tensor:
    """Held-out documents packed like the caches: ``[N, seq_len]`` int64."""
    from logitstore.workers.demo import training
    from logitstore.workers.demo.corpus import read_texts

    ids = tokenizer(read_texts(heldout), add_special_tokens=False)["input_ids"]
    return training.pack(ids, seq_len=budget(setup).seq_len, eos_id=tokenizer.eos_token_id)


def student_init(directory: Path, vocab_size: int, setup: Setup) -> Path:
    """The one initialization every student starts from (the demo's student config, seed 1)."""
    from logitstore.workers.demo import training

    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        b = budget(setup)
        config = training.llama_config(
            vocab_size, hidden_size=b.student_hidden, num_layers=b.student_layers, max_positions=1024
        )
        training.save_initialized(directory, config, seed=1)
    return directory


def train_students(
    workdir: Path, store: Path, teacher_dir: Path, rows: torch.Tensor, setup: Setup
) -> dict[str, dict[str, Any]]:
    """Train (or reuse) every student of :data:`RUNS` and evaluate it on held-out ``rows [N, T]``; the CE-only
    student's weights are kept for the gradient comparison."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from logitstore.workers.demo import training

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    init = student_init(workdir / "students" / "init", len(tokenizer), setup)
    results: dict[str, dict[str, Any]] = {}
    for name, (cache, loss_options) in RUNS.items():
        out = workdir / "students" / f"{slug(name)}.json"
        if out.exists() and json.loads(out.read_text()).get("setup") == asdict(setup):
            results[name] = json.loads(out.read_text())
            print(f"  {name}: already trained; reusing its results")
            continue
        model, info = training.train_student(
            init,
            store / cache,
            loss_options,
            steps=setup.steps,
            batch_size=setup.batch_size,
            lr=setup.lr,
            seed=0,
            desc=name,
            tokenizer=tokenizer,
            block_size=setup.block_size,
        )
        if name == BASELINE:
            model.save_pretrained(workdir / "students" / slug(name))
        results[name] = {
            "cache": cache,
            "loss": loss_options,
            **training.evaluate(model, teacher, rows),
            **training.calibration(model, rows),
            **info,
            "setup": asdict(setup),
        }
        out.write_text(json.dumps(results[name], indent=1))
    results["teacher"] = {
        **training.evaluate(teacher, teacher, rows),
        **training.calibration(teacher, rows),
        "entropy": mean_entropy(teacher, rows),
    }
    return results


@torch.no_grad()
def mean_entropy(model: Any, rows: torch.Tensor, *, batch_size: int = 16) -> float:
    """Mean next-token entropy (nats) of ``model`` over ``rows [N, T]``: how much a sparse cache has to cut."""
    total, count = 0.0, 0
    for ids in rows.split(batch_size):
        log_p = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
        total += float(-(log_p.exp() * log_p).sum())
        count += ids[:, 1:].numel()
    return total / count


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# -- 4. gradients at one fixed student state ----------------------------------------------------------------------


def fixed_batches(cache: Path, setup: Setup, vocab_size: int) -> list[dict[str, Any]]:
    """The first ``grad_batches`` batches of ``cache`` in seq_id order (the same sequences for every cache)."""
    from logitstore.torch import LogitDataset

    dataset = LogitDataset(
        cache, batch_size=setup.batch_size, shuffle=False, student_vocab_size=vocab_size, rank=0, world_size=1
    )
    batches = []
    for batch in dataset:
        batches.append(batch)
        if len(batches) == setup.grad_batches:
            break
    return batches


def gradient_reference(name: str) -> str | None:
    """The run whose gradient ``name``'s is compared with: the same loss on the dense cache (forward KL for the
    divergences, whose dense run is the reference); None when no dense run has that loss."""
    _, options = RUNS[name]
    if options.get("kind", "forward_kl") in ("forward_kl", "reverse_kl", "jsd"):
        return REFERENCE
    same = {k: v for k, v in options.items() if k != "tail"}
    for other, (other_cache, other_options) in RUNS.items():
        if other_cache == "dense" and {k: v for k, v in other_options.items() if k != "tail"} == same:
            return other
    return None


def gradient_agreement(workdir: Path, store: Path, setup: Setup) -> dict[str, dict[str, float]]:
    """Per KD run: cosine and norm ratio of its loss gradient to the same loss's on the dense cache
    (:func:`gradient_reference`), at the trained CE-only student, per fixed batch (mean, min) and summed over the
    batches."""
    from transformers import AutoModelForCausalLM

    from logitstore.workers.demo import training

    model = AutoModelForCausalLM.from_pretrained(workdir / "students" / slug(BASELINE)).eval()
    vocab = model.config.vocab_size
    per_batch: dict[str, list[torch.Tensor]] = {}
    seq_ids = None
    for name, (cache, loss_options) in RUNS.items():
        if name == BASELINE:
            continue
        batches = fixed_batches(store / cache, setup, vocab)
        ids = torch.cat([b["seq_ids"] for b in batches])
        if seq_ids is not None and not torch.equal(ids, seq_ids):
            raise RuntimeError(f"{name}: the fixed batches hold other sequences than the reference's")
        seq_ids = ids
        per_batch[name] = [training.loss_gradient(model, b, loss_options) for b in batches]
    reference = per_batch[REFERENCE]
    # the scale of ordinary minibatch noise: the full-KD gradient of one batch against the next one's
    between = [cosine(a, b) for a, b in zip(reference, reference[1:], strict=False)]
    out: dict[str, dict[str, float]] = {MINIBATCH_NOISE: {"cos_step_mean": sum(between) / len(between)}}
    for name, grads in per_batch.items():
        ref_name = gradient_reference(name)
        if ref_name is None:
            continue
        reference = per_batch[ref_name]
        cos = [cosine(g, r) for g, r in zip(grads, reference, strict=True)]
        ratio = [float(g.norm() / r.norm()) for g, r in zip(grads, reference, strict=True)]
        total, ref_total = torch.stack(grads).sum(0), torch.stack(reference).sum(0)
        out[name] = {
            "cos_step_mean": sum(cos) / len(cos),
            "cos_step_min": min(cos),
            "norm_ratio_step_mean": sum(ratio) / len(ratio),
            "cos_all": cosine(total, ref_total),
            "norm_ratio_all": float(total.norm() / ref_total.norm()),
        }
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# -- 5. cross-tokenizer alignment ---------------------------------------------------------------------------------


def alignment_cost(workdir: Path, cache: Path, train: Path, setup: Setup) -> dict[str, float]:
    """Paired fraction and time of re-tokenizing every sequence of ``cache`` for a student BPE of half the
    teacher's vocabulary, trained here on the same text."""
    from logitstore import open_dataset
    from logitstore.align import TokenizerAligner
    from logitstore.workers.checkpoints import train_bpe_tokenizer
    from logitstore.workers.demo.corpus import read_texts

    ds = open_dataset(cache)
    teacher_vocab = ds.manifest.tokenizer.vocab_size or ds.manifest.vocab_size
    student_dir = workdir / "student_tokenizer"
    if not student_dir.exists():
        train_bpe_tokenizer(read_texts(train), teacher_vocab // 2).save_pretrained(student_dir)
    aligner = TokenizerAligner(ds.manifest, student_dir)
    paired = student_tokens = teacher_tokens = 0
    started = time.process_time()
    for record in ds.read_range(0, len(ds)):
        student_ids, where = aligner.align(record.input_ids.astype("int64"))
        paired += int((where >= 0).sum())
        student_tokens += len(student_ids)
        teacher_tokens += len(record.input_ids)
    seconds = time.process_time() - started
    return {
        "teacher_vocab": teacher_vocab,
        "student_vocab": len(aligner.student),
        "aligned_fraction": paired / max(student_tokens, 1),
        "student_tokens_per_teacher_token": student_tokens / max(teacher_tokens, 1),
        "ms_per_1k_tokens": 1000 * seconds / max(teacher_tokens, 1) * 1000,
    }


# -- report -------------------------------------------------------------------------------------------------------


def gap_closed(value: float, baseline: float, reference: float) -> float:
    """Share of the baseline -> reference gap closed by ``value`` (1 = as good as the reference)."""
    gap = baseline - reference
    return (baseline - value) / gap if gap != 0 else math.nan


def table(results: dict[str, Any]) -> str:
    """The markdown table of one run's ``results.json``."""
    students, caches, grads = results["students"], results["caches"], results["gradients"]
    base, ref = students[BASELINE], students[REFERENCE]
    lines = [
        "| method | B/token | ids/pos | held-out CE | KL(T‖S) | ECE | gap closed (CE) | gap closed (KL) "
        "| grad cos (step) | grad norm ratio (step) | grad cos (all batches) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # gradients are compared with the same loss on the dense cache; a dense run compared with itself says nothing
    for name, (cache, _) in RUNS.items():
        s = students[name]
        c = caches[cache] if name != BASELINE else None
        g = grads.get(name)
        size = "| - | - " if c is None else f"| {c['bytes_per_token']:,.0f} | {c['entries_per_position']:.1f} "
        lines.append(
            f"| {name} {size}| {s['ce']:.4f} | {s['kl']:.4f} "
            f"| {100 * s['ece']:.2f}% | {gap_closed(s['ce'], base['ce'], ref['ce']):.0%} "
            f"| {gap_closed(s['kl'], base['kl'], ref['kl']):.0%} "
            + (
                "| - | - | - |"
                if g is None
                else f"| {g['cos_step_mean']:.3f} ({math.degrees(math.acos(min(1.0, g['cos_step_mean']))):.0f}°) "
                f"| {g['norm_ratio_step_mean']:.3f} | {g['cos_all']:.3f} |"
            )
        )
    t = students["teacher"]
    lines.append(f"| (teacher) | | | {t['ce']:.4f} | 0 | {100 * t['ece']:.2f}% | | | | | |")
    align = results.get("alignment")
    if align:
        lines += [
            "",
            f"Cross-tokenizer alignment (student BPE of {align['student_vocab']} ids vs the teacher's "
            f"{align['teacher_vocab']}): {align['aligned_fraction']:.1%} of student positions paired with a teacher "
            f"position, {align['ms_per_1k_tokens']:.1f} ms per 1,000 teacher tokens on one core "
            f"({align['student_tokens_per_teacher_token']:.2f} student tokens per teacher token).",
        ]
    noise = grads.get(MINIBATCH_NOISE)
    if noise is not None:
        lines += [
            "",
            f"Teacher entropy on held-out text: {t.get('entropy', math.nan):.2f} nats. Minibatch noise for scale: "
            f"the full-KD gradient of one fixed batch vs the next has cosine {noise['cos_step_mean']:.3f}.",
        ]
    return "\n".join(lines)


def run(out: Path, setup: Setup, teacher: Path | None) -> dict[str, Any]:
    """Every stage (module docstring); writes ``results.json`` and ``kd_quality.md`` into ``out``."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), load_average()
    stages: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        stages[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    t = time.monotonic()
    print(f"[1/5] corpus and teacher (load average {load_start})", flush=True)
    train, heldout, teacher_dir = teacher_and_corpus(out, setup, teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    data = training_subset(train, tokenizer, out / "bench_train.jsonl", tokens=setup.train_tokens)
    t = stage("teacher", t)
    print("[2/5] caches", flush=True)
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        caches = build_caches(out / "store", teacher_dir, data, setup)
    finally:
        ray.shutdown()
    check_same_order(out / "store", setup)
    t = stage("caches", t)
    print(f"[3/5] {len(RUNS)} students, {setup.steps} steps each (load average {load_average()})", flush=True)
    students = train_students(out, out / "store", teacher_dir, heldout_rows(heldout, tokenizer, setup), setup)
    t = stage("students", t)
    print("[4/5] gradients at the trained CE-only student", flush=True)
    gradients = gradient_agreement(out, out / "store", setup)
    t = stage("gradients", t)
    print("[5/5] cross-tokenizer alignment cost", flush=True)
    alignment = alignment_cost(out, out / "store" / "topk32", train, setup)
    stage("alignment", t)
    results = {
        "setup": asdict(setup),
        "teacher": str(teacher_dir),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "seconds": round(time.monotonic() - started, 1),
        "stage_seconds": stages,
        "caches": caches,
        "students": students,
        "gradients": gradients,
        "alignment": alignment,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "kd_quality.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nDone in {results['seconds']:.0f} s ({stages}); results: {out / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT_DIR, help="work directory (reused on rerun)")
    p.add_argument("--teacher", type=Path, default=None, help="an existing demo teacher directory (.demo/teacher)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, not the numbers")
    p.add_argument("--steps", type=int, default=None, help="student steps (default: 150, quick: 6)")
    args = p.parse_args(argv)
    setup = QUICK_SETUP if args.quick else FULL_SETUP
    if args.steps is not None:
        setup = Setup(**{**asdict(setup), "steps": args.steps})
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    run(args.out, setup, args.teacher)


if __name__ == "__main__":
    sys.exit(main())
