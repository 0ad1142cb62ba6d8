"""Reporting of the attention benchmark (``kernels/bench.py``): the log-log plot and the
printed table of forward+backward times with each sparse path's speedup."""
from __future__ import annotations

# MoBA's routing alone: gate scores, top-k and the work lists the kernels walk.
ROUTING = "moba_routing"


def plot(results, path: str, title: str) -> None:
    """Log-log time vs T, one panel per head count, one colour per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    heads = sorted({r["heads"] for r in results})
    fig, axes = plt.subplots(1, len(heads), figsize=(7 * len(heads), 5), squeeze=False)
    names = sorted({r["impl"] for r in results})
    for ax, h in zip(axes[0], heads):
        for i, name in enumerate(names):
            for mode, style in (("fwd", "-"), ("fwd_bwd", "--")):
                pts = sorted((r["seq_len"], r["time_s"]) for r in results
                             if r["impl"] == name and r["mode"] == mode and r.get("time_s")
                             and r["heads"] == h)
                if pts:
                    ax.loglog(*zip(*pts), style, marker="o", color=f"C{i}",
                              label=f"{name} {mode}")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("time (s, median)")
        ax.set_title(f"{title}, H={h}" if len(heads) > 1 else title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(summary: dict) -> str:
    """Forward+backward milliseconds per (heads, T) and implementation, with each sparse
    path's speedup over the fastest dense one in brackets; ``moba_routing`` is forward."""
    results = summary["results"]
    impls = list(dict.fromkeys(r["impl"] for r in results))
    ups = {(u["impl"], u["mode"], u["seq_len"], u["heads"]): u["speedup"]
           for u in summary.get("speedups", [])}
    head = f"{'H':>3} {'T':>7} " + "".join(f"{n:>22}" for n in impls)
    lines = ["forward+backward ms (speedup vs dense); moba_routing: forward ms", head,
             "-" * len(head)]
    for h, t in dict.fromkeys((r["heads"], r["seq_len"]) for r in results):
        cells = []
        for n in impls:
            mode = "fwd" if n == ROUTING else "fwd_bwd"
            rec = next((r for r in results if (r["impl"], r["mode"], r["seq_len"],
                                                r["heads"]) == (n, mode, t, h)), None)
            if rec is None:
                cells.append(f"{'':>22}")
            elif not rec.get("time_s"):
                cells.append(f"{'failed':>22}")
            else:
                up = ups.get((n, mode, t, h))
                txt = f"{rec['time_s'] * 1e3:.2f}" + (f" ({up:.2f}x)" if up else "")
                cells.append(f"{txt:>22}")
        lines.append(f"{h:>3} {t:>7} " + "".join(cells))
    return "\n".join(lines)
