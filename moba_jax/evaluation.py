"""Checkpoint evaluation: position-bucketed and trailing validation losses.

Evaluation sequences are *documents* of the held-out split, each starting at
its own beginning (BOS at position 0), truncated to the evaluation length ``L``
and padded after their end. The loss at position ``p`` is therefore the loss
of predicting the ``p+1``-th token of a document given everything before it in
that document, as in the MoBA paper's position-wise evaluation.

- **bucket** ``[start, end)``: mean loss over the tokens at those positions, of
  every sequence that reaches them (a document shorter than ``start`` adds
  nothing). Every token lies in exactly one bucket, so the token-weighted mean
  of the buckets is the overall loss.
- **trailing**: mean loss over the last ``trailing`` positions of the
  sequences that reach the full length ``L`` (MoBA's "trailing LM loss").

``L`` may exceed the training length (long-context extrapolation): rotary,
NoPE, MoBA and KDA layers all take any length.

Results go to ``RUN_DIR/eval/<key>.{json,png}`` (a loss-vs-position plot), one file per
checkpoint *and settings*, so evaluations with different settings coexist::

    step_00000050_len256_b32_t32_3f9c2a1b.json
    step, evaluation length, bucket size, trailing size, then a short hash of the rest
    of the settings that change the numbers (max_docs and the probes' lengths, depths,
    pairs and trials; :func:`eval_settings`)

The JSON holds those ``settings`` too; an evaluation is skipped when a file with the same
key and settings exists. Files of the old scheme (``step_XXXXXXXX.json``) are still read
by ``analysis.position`` under the settings they record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from moba_jax import fileio, sharding as shd
from moba_jax.data import BOS_ID, PAD_ID, build_datasets
from moba_jax.train.checkpointing import CheckpointError
from moba_jax.train.restore import load_run, read_run_config
from moba_jax.train.step import token_losses

log = logging.getLogger("moba_jax")


class EvalConfigError(ValueError):
    """An evaluation request that cannot be served (message names the field and the fix)."""


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seq_len=0,        # evaluation length L; 0 = the run's training seq_len
        bucket_size=0,    # bucket width; 0 = L // 8 (the papers use 2048 at 8K-32K)
        trailing=0,       # trailing window; 0 = bucket_size
        max_docs=0,       # 0 = every held-out document
        batch_size=8,
        # Retrieval probes (moba_jax/probes.py); "" skips a probe.
        needle_lengths="",           # e.g. "256,512,1024"
        needle_depths="0,0.25,0.5,0.75,1",
        mqar_lengths="",             # e.g. "256,512"
        mqar_pairs="4,16",
        probe_trials=8,
    ))


def _floats(field: str, value: str) -> list[float]:
    try:
        return [float(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise EvalConfigError(f"eval.{field}={value!r}: give comma-separated numbers") from None


def _ints(field: str, value: str) -> list[int]:
    try:
        return [int(float(x)) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise EvalConfigError(f"eval.{field}={value!r}: give comma-separated numbers") from None


def eval_settings(e, seq_len: int, bucket: int, trailing: int) -> dict:
    """The settings that change an evaluation's numbers (``batch_size`` does not).

    A probe's depths, pairs and trials are recorded only when that probe runs.
    """
    probes = {}
    if str(e.needle_lengths).strip():
        probes["needle"] = {"lengths": _ints("needle_lengths", e.needle_lengths),
                            "depths": _floats("needle_depths", e.needle_depths),
                            "trials": int(e.probe_trials)}
    if str(e.mqar_lengths).strip():
        probes["mqar"] = {"lengths": _ints("mqar_lengths", e.mqar_lengths),
                          "pairs": _ints("mqar_pairs", e.mqar_pairs), "trials": int(e.probe_trials)}
    return {"seq_len": seq_len, "bucket_size": bucket, "trailing_size": trailing,
            "max_docs": int(e.max_docs), "probes": probes}


def settings_key(step: int, settings: dict) -> str:
    """File stem of an evaluation: ``step_00000050_len256_b32_t32_<hash of the rest>``."""
    rest = {k: v for k, v in settings.items() if k not in ("seq_len", "bucket_size", "trailing_size")}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    return (f"step_{step:08d}_len{settings['seq_len']}_b{settings['bucket_size']}"
            f"_t{settings['trailing_size']}_{digest}")


def probe_lines(result: dict) -> list[str]:
    """One line per probe of an evaluation result: accuracy per context length (and pairs)."""
    r = result.get("retrieval") or {}
    lines = []
    if "needle" in r:
        n = r["needle"]
        cells = [f"len {L}: {np.mean(acc):.3f} (digits {np.mean(dig):.3f})"
                 for L, acc, dig in zip(n["lengths"], n["accuracy"], n["digit_accuracy"])]
        lines.append(f"needle ({len(n['depths'])} depths, {n['trials']} trials, chance "
                     f"{n['digit_chance']:g}/digit): " + " | ".join(cells))
    if "mqar" in r:
        m = r["mqar"]
        cells = [f"len {L} x{p}: {acc[j]:.3f}" for L, acc in zip(m["lengths"], m["accuracy"])
                 for j, p in enumerate(m["pairs"])]
        lines.append(f"mqar ({m['trials']} trials, chance {m['chance']:g}): " + " | ".join(cells))
    return lines


def document_sequences(val_rows: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents as rows ``[N, L + 1]`` starting at their BOS, and their lengths.

    ``val_rows`` are the packed validation rows of :class:`moba_jax.data.LMDatasets`;
    documents are recovered from the stream by its BOS markers.
    """
    stream = val_rows.reshape(-1)
    stream = stream[stream != PAD_ID]
    starts = np.flatnonzero(stream == BOS_ID)
    ends = np.append(starts[1:], len(stream))
    rows = np.full((len(starts), seq_len + 1), PAD_ID, dtype=np.int32)
    lengths = np.zeros(len(starts), dtype=np.int64)
    for i, (s, e) in enumerate(zip(starts, ends)):
        doc = stream[s:min(e, s + seq_len + 1)]
        rows[i, :len(doc)] = doc
        lengths[i] = len(doc) - 1          # predicted tokens
    return rows, lengths


def position_losses(loss_fn, params, rows: np.ndarray, full_length: np.ndarray, batch_size: int,
                    mesh, progress: bool = False) -> tuple[np.ndarray, ...]:
    """Summed loss and token count at every position in one pass over ``rows``.

    Returns ``(total, count, full_total, full_count)``: the sums over all rows,
    then over the rows flagged in ``full_length`` (those reaching the full
    evaluation length, for the trailing loss).
    """
    from moba_jax.data.packing import batch_from_rows
    seq_len = rows.shape[1] - 1
    sums = np.zeros((4, seq_len))
    sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    n_batches = -(-len(rows) // batch_size)
    it = range(n_batches)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="eval", unit="batch", leave=False)
    for b in it:
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        full = full_length[b * batch_size:(b + 1) * batch_size]
        if len(chunk) < batch_size:
            pad = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.full((pad, seq_len + 1), PAD_ID, chunk.dtype)])
            full = np.concatenate([full, np.zeros(pad, bool)])
        batch = {k: jax.device_put(v, sharding) for k, v in batch_from_rows(chunk).items()}
        loss_BL, mask_BL = (np.asarray(x, np.float64) for x in loss_fn(params, batch))
        sums += [loss_BL.sum(0), mask_BL.sum(0), loss_BL[full].sum(0), mask_BL[full].sum(0)]
    return tuple(sums)


def bucketize(total: np.ndarray, count: np.ndarray, lengths: np.ndarray, bucket_size: int,
              trailing: int, trailing_loss: tuple[float, float]) -> dict:
    seq_len = len(total)
    buckets = []
    for start in range(0, seq_len, bucket_size):
        end = min(start + bucket_size, seq_len)
        n = float(count[start:end].sum())
        buckets.append({"label": f"{_k(start)}-{_k(end)}", "start": start, "end": end,
                        "loss": float(total[start:end].sum() / n) if n else None,
                        "tokens": int(n), "sequences": int((lengths > start).sum())})
    t_sum, t_n = trailing_loss
    return {"overall": {"loss": float(total.sum() / max(count.sum(), 1)), "tokens": int(count.sum())},
            "buckets": buckets,
            "trailing": {"label": "trailing", "last": trailing,
                         "loss": float(t_sum / t_n) if t_n else None, "tokens": int(t_n),
                         "sequences": int((lengths >= seq_len).sum())}}


def _k(n: int) -> str:
    """Position labels in the papers' style: 2048 -> '2k', 300 -> '300'."""
    return f"{n // 1024}k" if n % 1024 == 0 and n else str(n)


def evaluate_run(run_dir: str, step: int | None = None, eval_cfg=None, *, mesh=None,
                 progress: bool = False, overwrite: bool = False,
                 out_dir: str | None = None) -> dict:
    """Evaluates one run's checkpoint; writes and returns the result dict.

    Writes ``<out_dir>/eval/<key>.png`` and then ``.json`` (the JSON marks a finished
    evaluation), each whole or not at all; ``out_dir`` defaults to ``run_dir`` (another
    folder for a run in a read-only directory)."""
    e = default_eval_config() if eval_cfg is None else eval_cfg
    config, resolved = read_run_config(run_dir)
    seq_len = int(e.seq_len) or int(config.train.seq_len)
    if seq_len <= 0:
        raise EvalConfigError(f"eval.seq_len={e.seq_len} must be positive")
    bucket = int(e.bucket_size) or max(1, seq_len // 8)
    trailing = int(e.trailing) or bucket
    if bucket <= 0 or bucket > seq_len:
        raise EvalConfigError(f"eval.bucket_size={bucket} must be in [1, eval.seq_len={seq_len}]")
    if trailing <= 0 or trailing > seq_len:
        raise EvalConfigError(f"eval.trailing={trailing} must be in [1, eval.seq_len={seq_len}]")
    mesh = mesh or shd.make_mesh(data=-1)
    if int(e.batch_size) % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise EvalConfigError(f"eval.batch_size={e.batch_size} must be divisible by the mesh's "
                              f"data*fsdp={mesh.shape['data'] * mesh.shape['fsdp']}")
    settings = eval_settings(e, seq_len, bucket, trailing)
    run = load_run(run_dir, step=step, mesh=mesh)
    key = settings_key(run.step, settings)
    out_path = os.path.join(out_dir or run_dir, "eval", key + ".json")
    if os.path.exists(out_path) and not overwrite:
        try:
            with open(out_path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("settings") == settings:
            return old
    if jax.process_index() == 0:
        fileio.check_writable(os.path.dirname(out_path))   # fail before the work

    data = build_datasets(config.data, seq_len=int(config.train.seq_len),
                          global_batch=int(config.train.global_batch), seed=int(config.train.seed))
    rows, lengths = document_sequences(data.val_rows, seq_len)
    if int(e.max_docs):
        rows, lengths = rows[:int(e.max_docs)], lengths[:int(e.max_docs)]
    if not len(rows):
        raise EvalConfigError("the held-out split has no documents; raise data.val_fraction")

    spec = run.spec
    def loss_fn(params, batch):
        losses, mask = token_losses(spec, params, batch)
        return losses * mask, mask
    with shd.activation_sharding(mesh, run.rules):
        total, count, t_tot, t_cnt = position_losses(
            jax.jit(loss_fn), run.params, rows, lengths >= seq_len, int(e.batch_size), mesh,
            progress)
    trailing_loss = (float(t_tot[-trailing:].sum()), float(t_cnt[-trailing:].sum()))
    retrieval = run_probes(spec, run.params, data.val_rows, settings["probes"], mesh, run.rules)
    result = {"run": os.path.basename(os.path.normpath(run_dir)), "step": run.step,
              "seq_len": seq_len, "train_seq_len": int(config.train.seq_len),
              "bucket_size": bucket, "trailing_size": trailing, "max_docs": int(e.max_docs),
              "settings": settings, "key": key, "documents": int(len(rows)),
              "tokens": int(run.meta.get("tokens", 0)),
              **{k: run.meta[k] for k in run.meta if k.startswith("flops_")},
              **bucketize(total, count, lengths, bucket, trailing, trailing_loss),
              "position_loss": [float(x) if c else None for x, c in
                                zip(total / np.maximum(count, 1), count)],
              "retrieval": retrieval}
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        plot_position_loss(result, out_path[:-5] + ".png")
        fileio.write_json(out_path, result)
    return result


def run_probes(spec, params, val_rows, probe_settings: dict, mesh, rules=shd.DEFAULT_RULES) -> dict:
    """Needle and MQAR grids as ``eval_settings(...)["probes"]`` describes them (empty
    dict if none), so the recorded settings are exactly what ran."""
    from moba_jax import probes
    filler = val_rows.reshape(-1)
    filler = filler[filler < 256].astype(np.int32)
    out = {}
    with shd.activation_sharding(mesh, rules):
        fn = jax.jit(lambda t: spec.apply(params, t))
        try:
            if "needle" in probe_settings:
                n = probe_settings["needle"]
                out["needle"] = probes.needle_probe(fn, filler, n["lengths"], n["depths"], n["trials"])
            if "mqar" in probe_settings:
                m = probe_settings["mqar"]
                out["mqar"] = probes.mqar_probe(fn, filler, m["lengths"], m["pairs"], m["trials"])
        except ValueError as err:
            raise EvalConfigError(f"eval probes: {err}") from None
    return out


def plot_position_loss(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    pos = np.arange(len(result["position_loss"]))
    vals = np.array([np.nan if v is None else v for v in result["position_loss"]])
    ax.plot(pos, vals, lw=0.6, alpha=0.5, label="per position")
    for b in result["buckets"]:
        if b["loss"] is not None:
            ax.hlines(b["loss"], b["start"], b["end"], colors="C3", lw=2)
    ax.plot([], [], color="C3", lw=2, label=f"bucket means ({result['bucket_size']} wide)")
    if result["seq_len"] > result["train_seq_len"]:
        ax.axvline(result["train_seq_len"], color="k", ls=":", lw=1, label="training length")
    ax.set_xlabel("position in document")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{result['run']} @ step {result['step']}: length {result['seq_len']}, "
                 f"{result['bucket_size']}-wide buckets, trailing {result['trailing_size']}")
    ax.legend()
    fig.tight_layout()
    fileio.write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"), binary=True)
    plt.close(fig)


def find_runs(workdir: str) -> list[str]:
    """``[workdir]`` for a run directory, or every finished run inside a sweep directory."""
    if os.path.exists(os.path.join(workdir, "config.json")):
        return [workdir]
    if not os.path.isdir(workdir):
        raise CheckpointError(f"--workdir={workdir} does not exist")
    runs = sorted(os.path.join(workdir, d) for d in os.listdir(workdir)
                  if os.path.exists(os.path.join(workdir, d, "result.json")))
    if not runs:
        raise CheckpointError(f"{workdir} is neither a run directory (config.json) nor a sweep "
                              "with finished runs (*/result.json)")
    return runs
