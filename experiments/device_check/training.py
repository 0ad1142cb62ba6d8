"""Section (b): training throughput of the ~150M-parameter model, one job per arm, after
a bf16 matmul peak measured in the same run.

``peak``: the best time of a square ``[n, n] @ [n, n]`` product in ``cfg.training.peak``'s
dtype (float32 accumulation), as FLOP/s. Each arm: ``moba_jax.train.throughput.measure``
on the run config of :func:`arm_config` (the trainer's own jitted step, compiled ahead of
time, then timed), recorded with tokens/s, step ms, compile seconds and MFU against the
dense bf16 spec (``cfg.training.spec_peak_flops``, 989 TFLOP/s for an H100/H200 SXM) and
against the measured peak. MFU counts the step's FLOPs in the ``compiled`` convention
(``moba_jax/accounting.py``: the matmuls and the element-wise work the program does);
``model_flops_per_s`` gives the ``exact`` (matmul-only) count beside it.
"""
from __future__ import annotations

from experiments.device_check import records

PEAK_KIND = "peak"


def measure_peak(p) -> dict:
    """``{flops_per_s, n, dtype, time_s, device}``: the best of ``p.repeats`` square
    matmuls in ``p.dtype`` (``moba_jax.train.metrics.measure_matmul_flops``)."""
    import jax

    from moba_jax.train import metrics

    flops = metrics.measure_matmul_flops(int(p.n), int(p.repeats), str(p.dtype))
    return dict(flops_per_s=flops, n=int(p.n), dtype=str(p.dtype), time_s=2.0 * p.n ** 3 / flops,
                device=jax.devices()[0].device_kind)


def arm_config(cfg, arm: str):
    """The run config of one arm: ``configs/lm.py``'s base with ``training.model``, the
    arm's attention pattern (``configs.device_check.ARMS``) and the section's
    implementations, sequence length and batch."""
    from configs import device_check
    from configs.lm import base_config

    t = cfg.training
    if arm not in device_check.ARMS:
        raise ValueError(f"training arm {arm!r} unknown; choose from "
                         f"{', '.join(device_check.ARMS)}")
    c = base_config()
    c.model.update(t.model.to_dict())
    c.model.update(device_check.ARMS[arm])
    for kind in ("full", "moba", "kda", "mla"):
        c.model.attention[kind].implementation = t.implementations[kind]
    c.model.attention.moba.block_size = int(cfg.moba.block_size)
    c.model.attention.moba.top_k = int(cfg.moba.top_k)
    c.train.seq_len, c.train.global_batch = int(t.seq_len), int(t.global_batch)
    c.train.progress = False
    return c


def _measured_peak(out: str) -> float | None:
    for r in records.read(out):
        if r.get("section") == "training" and r.get("kind") == PEAK_KIND:
            return r["flops_per_s"]
    return None


def run_item(name: str, cfg, out: str, deadline: float, log=print) -> None:
    """``peak`` (the matmul) or one arm's throughput."""
    del deadline                      # one measurement per item: the hard limit suffices
    if name == "peak":
        r = measure_peak(cfg.training.peak)
        records.append(out, dict(section="training", kind=PEAK_KIND, **r))
        log(f"[training] {r['dtype']} {r['n']}^3 matmul: {r['flops_per_s'] / 1e9:,.0f} GFLOP/s")
        return
    import jax

    from moba_jax import accounting
    from moba_jax.train import throughput

    t = cfg.training
    c = arm_config(cfg, name)
    base = dict(section="training", arm=name, seq_len=int(t.seq_len),
                global_batch=int(t.global_batch), pattern=c.model.attention_pattern,
                n_layers=int(c.model.n_layers), d_model=int(c.model.d_model))
    log(f"[training] {name}: {c.model.attention_pattern} x {c.model.n_layers} layers, "
        f"d_model {c.model.d_model}, seq {t.seq_len}, batch {t.global_batch} ...")
    r = throughput.measure(c, steps=int(t.steps), warmup=int(t.warmup))  # errors: job.py
    exact = r.tokens_per_s * accounting.train_flops_per_token(c.model, t.seq_len, "exact")
    n, peak = jax.device_count(), _measured_peak(out)
    rec = dict(base, kind="point", **r.row(), model_flops_per_s=exact, devices=n,
               mfu_spec=r.compiled_flops_per_s / (n * float(t.spec_peak_flops)),
               mfu_measured_peak=(r.compiled_flops_per_s / (n * peak)) if peak else None,
               measured_peak_flops=peak)
    records.append(out, rec)
    log(f"[training] {name}: {r.tokens_per_s:,.0f} tokens/s, step {r.step_ms:.1f} ms, "
        f"compile {r.compile_s:.1f} s, MFU {100 * rec['mfu_spec']:.1f}% of spec"
        + (f", {100 * rec['mfu_measured_peak']:.1f}% of the measured peak" if peak else ""))
