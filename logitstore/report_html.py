"""Rendering a :class:`logitstore.report.Report`: matplotlib PNGs, ``index.html`` (self-contained but for the
PNGs beside it) and ``report.json``. Uses matplotlib's object API (``Figure``, Agg), never pyplot or a display."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.report import AuditCurves, Report, describe

_ENTROPY_LABEL = {
    "exact": "entropy of each stored distribution (exact, up to the encoding's logprob error)",
    "estimate": "unbiased Monte-Carlo estimate from the n draws: sum over drawn ids of (c/n) * -log p "
    "(importance-weighted when the proposal temperature is not 1). The mean is unbiased; single positions are "
    "noisy, so the histogram is wider than the true one",
    "bounds": "bounds, since only the top entries are stored: lower = stored part + tail mass at the smallest "
    "stored probability (tail ids cannot be more probable); upper = tail mass spread uniformly over the ids "
    "not stored",
}


def write_report(report: Report, out: str | os.PathLike[str]) -> str:
    """Write the PNGs, ``report.json`` and, last, ``index.html`` into ``out`` (created); returns index.html's path."""
    from matplotlib.figure import Figure  # noqa: F401 -- fail here, before any file is written

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    sections = [
        _entropy_section(report, directory),
        _mass_section(report, directory),
        _entries_section(report, directory),
        _bytes_section(report, directory),
        _audit_section(report, directory),
    ]
    (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=True))
    page = _page(report, sections)
    index = directory / "index.html"
    tmp = index.with_name("index.html.partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return str(index)


# -- sections -----------------------------------------------------------------------------------------------------


def _entropy_section(report: Report, directory: Path) -> str:
    p = report.positions
    fig, ax = _figure()
    label = {"exact": "entropy", "estimate": "entropy estimate", "bounds": "lower bound"}[p.entropy_kind]
    series = [(label, p.entropy)]
    if p.entropy_upper is not None:
        series.append(("upper bound", p.entropy_upper))
    a = report.audit
    if a is not None and a.source == "audit":
        series.append((f"exact, {a.positions:,} audited positions", a.entropy))
    hi = max(float(np.quantile(x, 0.995)) for _, x in series if x.size) if any(x.size for _, x in series) else 1.0
    bins = np.linspace(0.0, max(hi, 1e-3) * 1.02, 60)
    for name, x in series:
        ax.hist(np.clip(x, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.6, label=name)
    ax.set_xlabel("teacher entropy (nats)")
    ax.set_ylabel("density of positions")
    ax.legend()
    _save(fig, directory / "entropy.png")
    rows = [[name, *_fmt_describe(x)] for name, x in series]
    text = f"What is shown: {_ENTROPY_LABEL[p.entropy_kind]}."
    if a is not None and a.source == "audit":
        text += " The audited positions give the exact entropy of a random sample of positions."
    return _section(
        "Teacher entropy",
        "entropy.png",
        text,
        _table(["quantity (nats)", "mean", "p10", "median", "p90"], rows),
    )


def _mass_section(report: Report, directory: Path) -> str:
    p = report.positions
    fig, ax = _figure()
    ax.hist(np.clip(p.kept_mass, 0.0, 1.0), bins=np.linspace(0, 1, 51), color="#4C72B0")
    ax.set_xlabel("teacher probability mass of the stored ids")
    ax.set_ylabel("positions")
    _save(fig, directory / "kept_mass.png")
    text = (
        "Sum of the stored ids' teacher probabilities at each position (the tail, 1 - kept mass, is exact because "
        "the log-sum-exp is stored). Values are clipped to [0, 1] in the plot: the compact encoding's rounding can "
        "put a near-deterministic position slightly above 1."
    )
    return _section(
        "Kept teacher mass per position",
        "kept_mass.png",
        text,
        _table(["", "mean", "p10", "median", "p90"], [["kept mass", *_fmt_describe(p.kept_mass)]]),
    )


def _entries_section(report: Report, directory: Path) -> str:
    p = report.positions
    fig, ax = _figure()
    lo, hi = int(p.entries.min(initial=0)), int(p.entries.max(initial=0))
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo <= 60 else 60
    ax.hist(p.entries, bins=bins, color="#55A868")
    ax.set_xlabel("entries stored per position")
    ax.set_ylabel("positions")
    _save(fig, directory / "entries.png")
    return _section(
        "Entries per position",
        "entries.png",
        "Number of (id, logprob) entries stored per position: constant for top-k and dense, ragged for top-p and "
        "sample (distinct ids among the n draws).",
        _table(["", "mean", "p10", "median", "p90"], [["entries", *_fmt_describe(p.entries.astype(np.float64))]]),
    )


def _bytes_section(report: Report, directory: Path) -> str:
    s = report.storage
    fields = [f for f in s.fields if f.nbytes > 0]
    fig, ax = _figure(height=max(2.5, 0.35 * len(fields) + 1))
    names = [f.name for f in fields][::-1]
    ax.barh(
        names,
        [f.bytes_per_token for f in fields][::-1],
        color=["#C44E52" if f.per_entry else "#4C72B0" for f in fields][::-1],
    )
    ax.set_xlabel("bytes per token")
    _save(fig, directory / "bytes.png")
    total = s.bytes_per_token
    rows = [
        [
            f.name,
            "entry" if f.per_entry else "token",
            f"{f.nbytes:,}",
            f"{f.bytes_per_token:.3f}",
            _pct(f.bytes_per_token, total),
        ]
        for f in fields
    ]
    rows.append(["total", "", f"{sum(f.nbytes for f in fields):,}", f"{total:.3f}", "100%"])
    text = (
        f"Compressed bytes of each stored field per token (Parquet column chunks incl. page headers / Zarr files), "
        f"measured on {s.shards_measured} shard(s) plus the key index. Per-entry fields (red) cost "
        f"{s.bytes_per_entry:.3f} bytes per stored entry; the rest (blue) {s.fixed_bytes_per_token:.3f} bytes per "
        "token whatever the method keeps."
    )
    if s.audit_bytes:
        text += (
            f" The audit sidecar adds {s.audit_bytes:,} bytes ({s.audit_bytes / max(1, report.summary['tokens']):.2f} "
            "per token), not counted here."
        )
    return _section(
        "Bytes per token by field",
        "bytes.png",
        text,
        _table(["field", "grows per", "bytes", "bytes/token", "share"], rows),
    )


def _audit_section(report: Report, directory: Path) -> str:
    a = report.audit
    if a is None and report.summary["audit_fraction"] is not None:
        return (
            "<section><h2>Choosing k or n</h2><p>This dataset has an audit sidecar, but it could not be read at "
            "this location (see the notes above); run the report on the dataset's directory instead.</p></section>"
        )
    if a is None:
        return (
            "<section><h2>Choosing k or n</h2><p>This dataset has no audit sidecar. Rebuild it with "
            "<code>logitstore precompute ... --audit-fraction F</code> (F so that F &times; tokens is a few thousand "
            "positions) to see, measured on this teacher's own distributions, the kept mass and divergence of every "
            "k and the support of every n, with their storage cost.</p></section>"
        )
    s = report.storage
    summary = report.summary
    where = (
        f"{a.positions:,} audited positions (full distributions kept by <code>--audit-fraction "
        f"{summary['audit_fraction']:g}</code>)"
        if a.source == "audit"
        else f"{a.positions:,} positions of this dense cache"
    )
    _plot_topk(a, summary, directory / "audit_topk.png")
    _plot_sample(a, summary, directory / "audit_sample.png")
    _plot_budget(a, report, directory / "budget.png")
    topk_rows = [
        [
            str(k),
            f"{a.topk_mass[:, i].mean():.4f}",
            f"{np.quantile(a.topk_mass[:, i], 0.1):.4f}",
            f"{a.topk_kl_renorm[:, i].mean():.4f}",
            f"{a.topk_kl_tail[:, i].mean():.4f}",
            f"{s.estimate(k):.1f}",
        ]
        for i, k in enumerate(a.ks)
    ]
    topp_rows = [
        [
            f"{q:g}",
            *(f"{v:.1f}" for v in (describe(a.topp_entries[:, i])[key] for key in ("mean", "median", "p90"))),
            f"{s.estimate(float(a.topp_entries[:, i].mean())):.1f}",
        ]
        for i, q in enumerate(a.top_p)
    ]
    sample_rows = [
        [
            str(n),
            f"{a.sample_unique[:, i].mean():.2f}",
            f"{a.sample_mass[:, i].mean():.4f}",
            f"{a.sample_sqerr[:, i].mean():.2e}",
            f"{s.estimate(float(a.sample_unique[:, i].mean())):.1f}",
        ]
        for i, n in enumerate(a.ns)
    ]
    bpe = f"{s.fixed_bytes_per_token:.2f} + entries &times; {s.bytes_per_entry:.3f}"
    return f"""<section><h2>Choosing k or n</h2>
<p>Measured on {where}: every number below is an exact function of those distributions (renormalized in float64),
averaged over positions. Bytes/token are estimates from this dataset's own costs: {bpe} bytes
(per-entry costs differ somewhat between methods: top-k stores ids by rank, sample stores id gaps and counts).</p>
<figure><img src="audit_topk.png" alt="top-k kept mass and KL against k"><figcaption>Top-k. Left: kept teacher mass
(mean, band 10-90% of positions). Right: KL(renormalized top-k &#8214; p) = &minus;log(kept mass), how far the
renormalized target (<code>tail="renorm"</code>) is from the teacher (KL(p &#8214; renormalized top-k) itself is
infinite whenever the tail has mass); and KL(p &#8214; top-k + uniform tail), the teacher's information about the
tail's shape that top-k does not store: how far a student that matches the stored entries and the tail's total mass
(<code>tail="ghost"</code> / <code>"exact"</code>) but spreads that mass uniformly still is from the
teacher.</figcaption></figure>
{_table(["k", "kept mass", "p10 kept mass", "KL renorm (nats)", "KL tail (nats)", "est. bytes/token"], topk_rows)}
<h3>Top-p</h3>
<p>Entries the smallest prefix reaching mass p needs (no k_max clamp).</p>
{_table(["p", "mean entries", "median", "p90", "est. bytes/token"], topp_rows)}
<figure><img src="audit_sample.png" alt="sampling: distinct ids and kept mass against n"><figcaption>Sampling
n draws from the teacher (Random-Sampling KD). Left: expected distinct ids,
&sum; 1 &minus; (1 &minus; p<sub>i</sub>)<sup>n</sup> (what is stored). Middle: expected teacher mass of the drawn
ids, &sum; p<sub>i</sub> (1 &minus; (1 &minus; p<sub>i</sub>)<sup>n</sup>). Right:
E&#8214;c/n &minus; p&#8214;&sup2; = (1 &minus; &sum; p<sub>i</sub>&sup2;) / n, the squared error of the unbiased
target c/n.</figcaption></figure>
{_table(["n", "distinct ids", "kept mass", "E||c/n - p||^2", "est. bytes/token"], sample_rows)}
<figure><img src="budget.png" alt="kept mass against bytes per token"><figcaption>Storage budget: kept teacher mass
against estimated bytes/token for each setting; the star is this dataset as stored. For a budget, read off the
setting that keeps the most mass (top-k / top-p) or the largest n (sample, whose target is unbiased whatever its
support) under it.</figcaption></figure>
</section>"""


# -- plots --------------------------------------------------------------------------------------------------------


def _plot_topk(a: AuditCurves, summary: dict[str, Any], path: Path) -> None:
    fig, (left, right) = _figure(ncols=2, width=11)
    ks = np.array(a.ks)
    mass = a.topk_mass
    left.plot(ks, mass.mean(axis=0), marker="o", label="mean")
    left.fill_between(ks, np.quantile(mass, 0.1, axis=0), np.quantile(mass, 0.9, axis=0), alpha=0.25, label="10-90%")
    left.set_xscale("log", base=2)
    left.set_xlabel("k")
    left.set_ylabel("kept teacher mass")
    left.set_ylim(0, 1.02)
    # zeros (k = V, or nothing left in the tail) have no place on a log axis: leave them out
    for values, marker, label in (
        (a.topk_kl_renorm, "o", "KL(renormalized top-k || p)"),
        (a.topk_kl_tail, "s", "KL(p || top-k + uniform tail)"),
    ):
        mean = values.mean(axis=0)
        right.plot(ks, np.where(mean > 0, mean, np.nan), marker=marker, label=label)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("k")
    right.set_ylabel("mean KL (nats)")
    if summary.get("method_name") in ("topk", "topp") and summary.get("k"):
        for ax in (left, right):
            ax.axvline(summary["k"], color="grey", linestyle="--", linewidth=1, label="this dataset's k")
    left.legend()
    right.legend()
    _save(fig, path)


def _plot_sample(a: AuditCurves, summary: dict[str, Any], path: Path) -> None:
    fig, axes = _figure(ncols=3, width=14)
    ns = np.array(a.ns)
    axes[0].plot(ns, a.sample_unique.mean(axis=0), marker="o", label="E[distinct ids]")
    axes[0].plot(ns, ns, color="grey", linestyle=":", label="n")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("entries per position")
    axes[1].plot(ns, a.sample_mass.mean(axis=0), marker="o")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("E[kept teacher mass]")
    axes[2].plot(ns, a.sample_sqerr.mean(axis=0), marker="o")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("E||c/n - p||^2")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (draws per position)")
        if summary.get("method_name") == "sample" and summary.get("n"):
            ax.axvline(summary["n"], color="grey", linestyle="--", linewidth=1, label="this dataset's n")
    axes[0].legend()
    _save(fig, path)


def _plot_budget(a: AuditCurves, report: Report, path: Path) -> None:
    s = report.storage
    fig, ax = _figure(width=8, height=5)
    topk_x = [s.estimate(k) for k in a.ks]
    ax.plot(topk_x, a.topk_mass.mean(axis=0), marker="o", label="top-k")
    for x, y, k in zip(topk_x, a.topk_mass.mean(axis=0), a.ks, strict=True):
        ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    topp_n = a.topp_entries.mean(axis=0)
    ax.plot(
        [s.estimate(float(n)) for n in topp_n], a.top_p, marker="^", linestyle="none", label="top-p (0.9/0.95/0.99)"
    )
    sample_x = [s.estimate(float(u)) for u in a.sample_unique.mean(axis=0)]
    ax.plot(sample_x, a.sample_mass.mean(axis=0), marker="s", label="sample (support mass)")
    for x, y, n in zip(sample_x, a.sample_mass.mean(axis=0), a.ns, strict=True):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.plot(
        [report.summary["bytes_per_token"]],
        [report.summary["mean_kept_mass"]],
        marker="*",
        markersize=14,
        linestyle="none",
        color="black",
        label="this dataset",
    )
    ax.set_xscale("log")
    ax.set_xlabel("estimated bytes per token")
    ax.set_ylabel("mean kept teacher mass")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    _save(fig, path)


def _figure(*, ncols: int = 1, width: float = 7.0, height: float = 3.8) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


# -- HTML ---------------------------------------------------------------------------------------------------------


def _section(title: str, image: str, text: str, table: str) -> str:
    return (
        f'<section><h2>{html.escape(title)}</h2>\n<figure><img src="{image}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(text)}</figcaption></figure>\n{table}</section>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt_describe(x: np.ndarray) -> list[str]:
    d = describe(x)
    return [f"{d[k]:.4g}" for k in ("mean", "p10", "median", "p90")]


def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.1f}%" if total > 0 else "-"


def _page(report: Report, sections: list[str]) -> str:
    s = report.summary
    rows = [
        ("dataset", f"{s['name']} ({s['location']})"),
        (
            "teacher",
            f"{s['teacher']}, logit dim {s['vocab_size']:,}"
            + (f", {s['teacher_dtype']}" if s["teacher_dtype"] else ""),
        ),
        ("tokenizer", s["tokenizer"] or "-"),
        ("method", s["method"]),
        ("encoding", f"{s['encoding']}, backend {s['backend']}"),
        ("sequences", f"{s['sequences']:,} in {s['shards']} shard(s)"),
        ("tokens", f"{s['tokens']:,}"),
        ("bytes/token", f"{s['bytes_per_token']:.2f} (shards + key index)"),
        ("entries/position", f"{s['mean_entries_per_position']:.2f}"),
        ("mean kept mass", f"{s['mean_kept_mass']:.4f}"),
        (
            "audit",
            "none"
            if s["audit_fraction"] is None
            else f"fraction {s['audit_fraction']:g}: {s['audit_positions']:,} positions with full distributions",
        ),
        ("analysed", f"{s['analysed_positions']:,} positions of {s['analysed_sequences']:,} sequences"),
    ]
    header = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    title = html.escape(f"logitstore report: {s['name']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} table.summary th, table.summary td {{ text-align: left; }}
img {{ max-width: 100%; }} figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.9em; color: #444; }}
section {{ margin-top: 2em; }} code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head><body>
<h1>{title}</h1>
<table class="summary">{header}</table>
{f"<ul>{notes}</ul>" if notes else ""}
{"".join(sections)}
<p style="font-size:0.85em;color:#777">The numbers are also in <a href="report.json">report.json</a>.</p>
</body></html>
"""
