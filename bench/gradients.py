"""Gradient bias of cached targets: the mean kd_loss gradient of each method vs the full-KD gradient.

Run from the repository root::

    .venv/bin/python bench/gradients.py            # V = 4,000, 64 positions, 400 seeds for sampled caches
    .venv/bin/python bench/gradients.py --quick

For teacher logits from ``bench/teacher_like.py`` and a fixed student near it (teacher logits plus
Gaussian noise), each method's records go through the
real ``sparsify`` -> ``collate`` -> ``kd_loss`` path; the gradient with respect to the student logits is averaged
over ``--seeds`` sampling seeds (deterministic methods need one) and compared with the gradient of the exact
forward KL (float64): cosine and norm ratio. An unbiased estimator's mean gradient converges to cosine 1 and
ratio 1; a biased one stays where it is however many runs are averaged. Results: stdout and
``bench/out/gradients.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher_like import TeacherLike  # noqa: E402

import logitstore  # noqa: E402
from logitstore.collate import collate  # noqa: E402
from logitstore.losses import kd_loss  # noqa: E402
from logitstore.rng import position_streams  # noqa: E402
from logitstore.sparsify import sparsify  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"


def batch(spec: logitstore.Spec, z: torch.Tensor, input_ids: np.ndarray) -> dict:
    key = logitstore.content_key(input_ids)
    streams, positions = position_streams(spec.seed, [key], [len(input_ids)])
    sparse = sparsify(z, spec, streams=streams, positions=positions).numpy()
    record = logitstore.Record(seq_id=0, key=key, input_ids=input_ids, **sparse)
    return collate([record], spec=spec, vocab_size=z.shape[-1])


def gradient(spec: logitstore.Spec, z: torch.Tensor, s: torch.Tensor, input_ids: np.ndarray, **kw) -> torch.Tensor:
    x = s.clone().requires_grad_(True)
    kd_loss(x, batch(spec, z, input_ids), **kw).backward()
    return x.grad[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--positions", type=int, default=64)
    p.add_argument("--seeds", type=int, default=400)
    p.add_argument("--student-noise", type=float, default=1.0, help="student logits = teacher logits + N(0, this^2)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.positions, args.seeds = 500, 16, 40
    torch.manual_seed(0)
    z = TeacherLike(args.vocab, seed=0).logits(0, args.positions)
    # a student near the teacher (as after some training): the gradient q - p is then the subtle part KD is about
    s = (z + args.student_noise * torch.randn(args.positions, args.vocab)).unsqueeze(0)
    input_ids = np.arange(args.positions, dtype=np.int32)
    x = s.clone().double().requires_grad_(True)
    p_log = torch.log_softmax(z.double(), -1)
    (p_log.exp() * (p_log - torch.log_softmax(x[0], -1))).sum(-1).mean().backward()
    reference = x.grad[0].float()

    lossless = logitstore.LOSSLESS
    rows = []
    for label, make, seeds, kw in [
        ("sample n=16", lambda i: logitstore.Spec(method="sample", n=16, seed=i, encoding=lossless), args.seeds, {}),
        ("sample n=50", lambda i: logitstore.Spec(method="sample", n=50, seed=i, encoding=lossless), args.seeds, {}),
        (
            "sample n=50, proposal tau 1.5 (importance weights)",
            lambda i: logitstore.Spec(method="sample", n=50, proposal_temperature=1.5, seed=i, encoding=lossless),
            args.seeds,
            {},
        ),
        ("sample n=50, compact (q16)", lambda i: logitstore.Spec(method="sample", n=50, seed=i), args.seeds, {}),
    ] + [
        (
            f"topk k={k}, tail={tail}",
            lambda i, k=k: logitstore.Spec(method="topk", k=k, encoding=lossless),
            1,
            {"tail": tail},
        )
        for k in (4, 16, 64)
        for tail in ("renorm", "ghost", "exact")
    ]:
        mean = sum(gradient(make(i), z, s, input_ids, **kw) for i in range(seeds)) / seeds
        cos = torch.nn.functional.cosine_similarity(mean.flatten(), reference.flatten(), dim=0).item()
        ratio = (mean.norm() / reference.norm()).item()
        rows.append((label, seeds, cos, ratio))
        print(
            f"{label:55s} seeds {seeds:4d}  cos {cos:.4f}  angle {np.degrees(np.arccos(min(cos, 1))):5.1f} deg  "
            f"norm ratio {ratio:.3f}",
            flush=True,
        )
    lines = [
        f"# Mean kd_loss gradient vs full KD (V={args.vocab}, {args.positions} positions, forward KL)",
        "",
        "| cache | seeds averaged | cosine | angle | norm ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {label} | {seeds} | {cos:.4f} | {np.degrees(np.arccos(min(cos, 1))):.1f} deg | {ratio:.3f} |"
        for label, seeds, cos, ratio in rows
    ]
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "gradients.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
