"""The device check's summary: ``device_check.md`` from the records of ``device_check.json``.

Cells the run did not fill say why: ``skipped`` (the job's deadline, a length above its
limit, an anchor that is not installed), ``error`` (see the record), ``-`` (not reached:
the job ended first; its status is in the jobs table).
"""
from __future__ import annotations

import datetime

FILE = "device_check.md"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def _cell(recs: list[dict], fmt) -> str:
    if not recs:
        return "-"
    r = recs[-1]
    if r["kind"] == "point":
        return fmt(r)
    return r["kind"]


def _attention(recs: list[dict]) -> list[str]:
    # points, and the records of implementations skipped whole (no seq_len: every cell)
    pts = [r for r in recs if r.get("section") == "attention" and "impl" in r]
    r0 = next((r for r in pts if "heads" in r), None)
    if r0 is None:
        return []
    impls = list(dict.fromkeys(r["impl"] for r in pts))
    lens = sorted({r["seq_len"] for r in pts if "seq_len" in r})
    lines = []
    find = lambda i, t, m: [r for r in pts if r["impl"] == i and r.get("seq_len", t) == t
                            and r.get("mode", m) == m]
    for mode, title in (("fwd_bwd", "forward+backward"), ("fwd", "forward")):
        lines += [f"### Attention, {title}: ms (warm-up s); B={r0['batch']}, H={r0['heads']}, "
                  f"D={r0['head_dim']}, {r0['dtype']}", ""]
        lines += _table(["T"] + impls, [[f"{t:,}"] + [_cell(find(i, t, mode), lambda r: (
            f"{r['time_s'] * 1e3:.2f} ({r['warmup_s']:.1f})")) for i in impls] for t in lens])
    dense = [i for i in impls if i.startswith("dense_")]
    others = [i for i in impls if not i.startswith("dense_")]
    if dense and others:
        lines += [f"### Speed-up over {dense[0]}, forward+backward (x)", ""]
        rows = []
        for t in lens:
            base = [r for r in find(dense[0], t, "fwd_bwd") if r["kind"] == "point"]
            row = [f"{t:,}"]
            for i in others:
                mine = [r for r in find(i, t, "fwd_bwd") if r["kind"] == "point"]
                row.append(f"{base[-1]['time_s'] / mine[-1]['time_s']:.2f}"
                           if base and mine else "-")
            rows.append(row)
        lines += _table(["T"] + others, rows)
    return lines


def _flops(x: float) -> str:
    return f"{x / 1e12:,.0f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:,.1f} GFLOP/s"


def _training(recs: list[dict]) -> list[str]:
    tr = [r for r in recs if r.get("section") == "training"]
    if not tr:
        return []
    peak = [r for r in tr if r["kind"] == "peak"]
    pk = (f"{_flops(peak[-1]['flops_per_s'])} ({peak[-1]['dtype']} {peak[-1]['n']}^3 matmul)"
          if peak else "not measured")
    lines = ["### Training throughput", "", f"Measured peak: {pk}.", ""]
    rows = []
    for r in tr:
        if r["kind"] == "point":
            mp = r.get("mfu_measured_peak")
            rows.append([r["arm"], f"{r['pattern']} x {r['n_layers']}",
                         f"{r['n_params_nonembed'] / 1e6:.3g}M", f"{r['seq_len']} x {r['global_batch']}",
                         f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}", f"{r['compile_s']:.1f}",
                         f"{100 * r['mfu_spec']:.1f}%", f"{100 * mp:.1f}%" if mp else "-"])
        elif r["kind"] == "error":
            rows.append([r.get("item", "?"), "error: " + r["error"][:80]] + [""] * 7)
    return lines + _table(["arm", "layers", "N non-emb", "seq x batch", "tokens/s", "step ms",
                           "compile s", "MFU (spec)", "MFU (measured peak)"], rows)


def _tiles(recs: list[dict]) -> list[str]:
    tl = [r for r in recs if r.get("section") == "tiles" and "block_rows" in r]
    if not tl:
        return []
    r0 = tl[0]
    lines = [f"### MoBA tilings: {r0['impl']}, forward+backward, T={r0['seq_len']:,}, "
             f"H={r0['heads']}", ""]
    rows = [[f"({r['block_rows']}, {r['block_k']}, {r['num_warps']}, {r['num_stages']})",
             f"{r['time_s'] * 1e3:.2f}" if r["kind"] == "point" else
             r["kind"] + (": " + r.get("error", r.get("reason", ""))[:90])] for r in tl]
    return lines + _table(["(block_rows, block_k, warps, stages)", "ms"], rows)


def _accuracy(recs: list[dict]) -> list[str]:
    acc = [r for r in recs if r.get("section") == "accuracy" and "impl" in r]
    if not acc:
        return []
    groups: dict = {}
    for r in acc:
        groups.setdefault((r["impl"], r.get("against", ""), r.get("dtype", "")), []).append(r)
    rows = []
    for (impl, against, dtype), rs in groups.items():
        checks = [r for r in rs if r["kind"] == "check"]
        if checks:
            worst = max(checks, key=lambda r: r["error"] / r.get("tolerance", 1.0))
            ok = all(r.get("ok", True) for r in checks)
            verdict = ("pass" if ok else "FAIL") if "tolerance" in worst else "measured"
            rows.append([impl, against, dtype, f"{worst['tensor']}: {worst['error']:.2e}"
                         + (f" (bar {worst['tolerance']:.0e})" if "tolerance" in worst else ""),
                         verdict])
        else:
            r = rs[-1]
            rows.append([impl, against, dtype, r["kind"] + ": " +
                         str(r.get("error", r.get("reason", "")))[:90], ""])
    return ["### Accuracy (small shapes)", ""] + _table(
        ["impl", "against", "dtype", "worst tensor", "verdict"], rows)


def markdown(recs: list[dict], wall_s: float) -> str:
    env = next((r for r in recs if r.get("kind") == "env"), {})
    start = next((r for r in recs if r.get("kind") == "start"), {})
    when = datetime.datetime.fromtimestamp(start.get("wall_time", 0), datetime.timezone.utc)
    v = env.get("versions", {})
    lines = [f"# Device check, {when:%Y-%m-%d %H:%M} UTC", "",
             f"- device: {env.get('device_kind', '?')} x {env.get('device_count', '?')} "
             f"({env.get('nvidia_smi') or env.get('backend', '?')}), {env.get('cpus', '?')} CPUs",
             f"- python {env.get('python', '?')}, jax {v.get('jax', '?')}, flax {v.get('flax', '?')}"
             + "".join(f", {p} {v[p]}" for p in ("torch", "triton", "fla-core",
                                                "jax-linear-attention") if p in v),
             f"- commit {env.get('git_commit', '?')}; command `{' '.join(start.get('argv', []))}`",
             f"- budget {start.get('budget_s', 0):.0f} s, wall {wall_s:.0f} s", ""]
    for part in (_attention, _training, _tiles, _accuracy):
        lines += part(recs)
    suite = [r for r in recs if r.get("section") == "suite" and r["kind"] == "result"]
    if suite:
        s = suite[-1]
        lines += ["### Test suite (CPU, background)", "",
                  f"{s['summary'] or 'no summary line'}; {s['status']} after {s['seconds']:.0f} s "
                  f"(exit {s['returncode']}; suite.log)", ""]
    jobs = [r for r in recs if r.get("kind") == "job"]
    lines += ["### Jobs", ""] + _table(["job", "limit s", "took s", "status"], [
        [r["job"], f"{r['limit_s']:.0f}", f"{r.get('seconds', 0):.1f}", r["status"]] for r in jobs])
    return "\n".join(lines)
