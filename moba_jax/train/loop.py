"""The training loop: one run from config to results in its run directory.

``RUN_DIR`` receives ``config.json`` (the resolved config and derived run
length), ``metrics.jsonl`` (one line per logged step), ``checkpoints/`` and, once
the run has finished, ``result.json``. A run directory without ``result.json``
is unfinished: calling :func:`train` again resumes it from its latest checkpoint.

On SIGTERM (a preemption notice) the run saves a checkpoint at the next step
boundary and raises :class:`Preempted`; the entry points exit with code 75.

The host never waits for the device between log steps: the loss, the NaN/inf guard
and the metrics stay on the device until a log, evaluation or checkpoint step reads
them (in one fetch), so steps are dispatched ahead of the device in between. The
next ``train.prefetch`` batches are already on their devices before the step that
needs them (:class:`_Prefetcher`), and checkpoints are written in the background
(:mod:`moba_jax.train.checkpointing`). ``train.forbid_host_sync_between_logs=True``
(a debug switch) makes any host read of a device value between those steps an error
(:func:`_no_host_reads`).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from moba_jax import distributed, fileio
from moba_jax.accounting import activated_params
from moba_jax import sharding as shd
from moba_jax.budget import RunConfigError, eval_steps, run_length, switched_model_config
from moba_jax.data import build_datasets
from moba_jax.attention import kind_sources
from moba_jax.model import layer_kinds, param_counts
from moba_jax.validation import check_run_config
from moba_jax.train import checkpointing, metrics as mx, state as st, step as stp

log = logging.getLogger("moba_jax")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class HostSyncError(RuntimeError):
    """A device value was read on the host between log steps, under
    ``train.forbid_host_sync_between_logs``."""


class Preempted(RuntimeError):
    """SIGTERM or Ctrl-C arrived; a checkpoint at ``step`` was saved and the run can be
    resumed. The message says which ("preempted" or "interrupted")."""

    def __init__(self, run_dir: str, step: int, message: str | None = None):
        super().__init__(message or f"{distributed.stop_word()}: checkpoint saved at step "
                         f"{step} in {run_dir}; run the same command again to resume")
        self.run_dir, self.step = run_dir, step


def _diverged_message(step: int, loss: float, t, ckpt) -> str:
    """One line: the step whose train loss is not finite, what was kept, what to change."""
    good = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {good}) is kept in {ckpt.directory}"
            if good is not None else
            f"no checkpoint was saved before it (train.checkpoint_every={t.checkpoint_every})")
    return (f"training diverged at step {step}: train loss is {loss}; {kept}. Lower "
            f"train.lr (now {t.lr:g}) or raise train.warmup_frac (now {t.warmup_frac:g}), "
            "then start a fresh --workdir")


@dataclasses.dataclass
class RunResult:
    run_dir: str
    steps: int
    tokens: int
    final_val_loss: float
    summary: dict


def config_fingerprint(config) -> str:
    """Hash of everything that determines the run's trajectory (not its logging)."""
    keep = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
            for k in ("model", "data", "train") if k in config}
    for k in mx.LOGGING_FIELDS:
        keep["train"].pop(k, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@jax.jit
def _first_non_finite(seen, loss, step):
    """``(step, loss)`` of the first step whose train loss was not finite (step -1: none
    yet), updated on the device so the loop never waits for the host."""
    bad_step, bad_loss = seen
    new = (bad_step < 0) & ~jnp.isfinite(loss)
    return (jnp.where(new, step, bad_step), jnp.where(new, loss, bad_loss))


def _router_metrics(m: dict) -> dict:
    """The step's ``moe_*`` metrics (router statistics of MoE layers, ``moba_jax/moe/stats.py``)
    as JSON values: numbers, and lists for per-layer, per-expert loads. One host fetch."""
    found = jax.device_get({k: v for k, v in m.items() if k.startswith("moe_")})
    return {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64).round(6).tolist()
            for k, v in found.items()}


def _global_batch(local: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
            for k in stp.BATCH_KEYS}


class _Prefetcher:
    """Training batches taken ``depth`` ahead of the steps, already sent to their devices.

    Each batch travels with the data iterator's state *after* it (``get_state()`` when
    it was taken), so a checkpoint records the batches the steps consumed, not the ones
    waiting here: a resumed run goes on with the first batch still queued. Only the run's
    ``remaining`` batches are taken; ``depth=0`` takes each when its step needs it. The
    steps' own thread does it all (grain's threads read ahead on the host).
    """

    def __init__(self, it, sharding, depth: int, remaining: int):
        self._it, self._sharding, self._depth, self._left = it, sharding, depth, remaining
        self._queue = collections.deque()
        self.fill()

    def _take(self) -> None:
        local = next(self._it)
        self._queue.append((_global_batch(local, self._sharding), self._it.get_state()))
        self._left -= 1

    def fill(self) -> None:
        while len(self._queue) < self._depth and self._left > 0:
            self._take()

    def pop(self) -> tuple[dict, dict]:
        """The next batch (on its devices) and the data state after it."""
        if not self._queue:
            self._take()
        return self._queue.popleft()


_forbidden = threading.local()     # .on: this thread is between log steps, no host reads


@contextlib.contextmanager
def _host_reads_trapped():
    """Installs the trap that :func:`_no_host_reads` arms (and removes it afterwards)."""
    cls = type(jnp.zeros(()))          # jax.Array's concrete class, ArrayImpl
    untrapped = cls.__dict__["_value"]

    def trapped(self):
        if getattr(_forbidden, "on", False):
            raise HostSyncError(
                f"a device value (shape {self.shape}, {self.dtype}) was read on the host "
                "between log steps (train.forbid_host_sync_between_logs=True); keep it on the "
                "device until a log, evaluation or checkpoint step")
        return untrapped.fget(self)
    cls._value = property(trapped)
    try:
        yield
    finally:
        cls._value = untrapped


@contextlib.contextmanager
def _no_host_reads():
    """No host read of a device value in this thread, for the steps between log steps.

    JAX's device-to-host transfer guard catches every transfer on GPU and TPU, but never
    fires on CPU, where a device buffer is host memory. So the host reads that go through
    ``jax.Array`` itself (``float``, ``int``, ``bool``, ``format``, ``str``, ``tolist``,
    ``jax.device_get``: all read ``ArrayImpl._value``) are refused too, on any backend,
    once :func:`_host_reads_trapped` has installed the trap. Not caught on CPU: numpy's
    own reads of a CPU array through the buffer protocol (``np.asarray(x)``). Other
    threads (orbax's background save) are not affected.
    """
    _forbidden.on = True
    try:
        with jax.transfer_guard_device_to_host("disallow"):
            yield
    finally:
        _forbidden.on = False


def evaluate_with_se(eval_fn, params, val_batches, batch_sharding) -> tuple[float, float | None]:
    """The validation loss (token-weighted mean over ``val_batches``) and its standard
    error over sequences (:func:`step.sequence_standard_error`). Every batch is
    dispatched first; the outputs reach the host in one fetch at the end."""
    outs = jax.device_get([eval_fn(params, _global_batch(b, batch_sharding)) for b in val_batches])
    total, count = 0.0, 0.0
    for s, n, _, _ in outs:
        total += float(s)
        count += float(n)
    se = stp.sequence_standard_error([o[2] for o in outs], [o[3] for o in outs])
    return total / max(count, 1.0), se


def evaluate(eval_fn, params, val_batches, batch_sharding) -> float:
    """The validation loss alone (:func:`evaluate_with_se`)."""
    return evaluate_with_se(eval_fn, params, val_batches, batch_sharding)[0]


def _validate(config, n_devices_data: int) -> None:
    t = config.train
    if (t.global_batch // t.grad_accum) % n_devices_data:
        raise RunConfigError(
            f"train.global_batch / train.grad_accum = {t.global_batch // t.grad_accum} is not "
            f"divisible by the mesh's data*fsdp = {n_devices_data} devices; change the batch or the mesh")


def _finished_result(workdir: str, fingerprint: str, length) -> RunResult | None:
    """The recorded result when ``workdir`` holds this very run, finished: training it
    again is a no-op that writes nothing (so it works in a read-only directory)."""
    result_path = os.path.join(workdir, "result.json")
    if not os.path.exists(result_path):
        return None
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            recorded = json.load(f).get("fingerprint")
        with open(result_path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None             # unreadable records: train as usual, which rewrites them
    if recorded != fingerprint or summary.get("steps") != length.steps:
        return None
    log.info("%s has finished (result.json); nothing to train", workdir)
    return RunResult(workdir, length.steps, length.tokens, summary.get("final_val_loss"), summary)


def train(config, workdir: str, *, progress: bool | None = None) -> RunResult:
    """Trains one model as described by ``config`` into ``workdir`` (resuming if possible)."""
    check_run_config(config)
    t = config.train
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    _validate(config, mesh.shape["data"] * mesh.shape["fsdp"])
    tb_dir = os.path.join(workdir, "tb") if t.get("tensorboard", False) else None
    if tb_dir and not mx.tensorboard_available():
        raise RunConfigError('train.tensorboard=True needs tensorboardX; pip install -e ".[tensorboard]" '
                             "or leave train.tensorboard=False")
    length = run_length(config.model, t)
    is_main = jax.process_index() == 0
    fingerprint = config_fingerprint(config)
    finished = _finished_result(workdir, fingerprint, length)
    if finished is not None:
        return finished
    os.makedirs(workdir, exist_ok=True)

    data = build_datasets(config.data, seq_len=t.seq_len, global_batch=t.global_batch,
                          seed=t.seed, process_index=jax.process_index(),
                          process_count=jax.process_count())
    val_batches = data.val_batches(max_batches=config.eval.batches)

    setup = stp.setup(config, length.steps, mesh=mesh)
    rules, spec, tx, schedule = setup.rules, setup.spec, setup.tx, setup.schedule
    state_sh, batch_sh = setup.state_sharding, setup.batch_sharding
    distributed.check_batch_layout(batch_sh, t.global_batch, t.seq_len)
    distributed.install_preemption_handler()
    counts = param_counts(spec.param_shapes)
    counts["non_embedding_activated"] = activated_params(config.model)   # < total with MoE

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      max_to_keep=config.checkpoint.max_to_keep,
                                      async_save=bool(t.get("async_checkpoints", True)))
    writer = mx.MetricsWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_main,
                              tensorboard_dir=tb_dir)
    train_iter = data.train_iterator()
    start_step = 0
    latest = ckpt.latest_step()
    with shd.activation_sharding(mesh, rules):
        if latest is not None:
            state, data_state, meta = ckpt.restore(latest, st.abstract_state(spec, tx, state_sh))
            if meta.get("fingerprint") != fingerprint:
                raise RunConfigError(
                    f"{workdir} holds a run with a different config (fingerprint "
                    f"{meta.get('fingerprint')} != {fingerprint}); use a fresh --workdir")
            train_iter.set_state(data_state)
            start_step = int(latest)
            writer.truncate_after(start_step)
            log.info("resumed %s from step %d", workdir, start_step)
        else:
            state = st.create_state(config.model, tx, t.seed, state_sh)
            writer.reset()

        peak, peak_source = mx.peak_flops_per_device(t.get("peak_flops_per_device", 0.0))
        if is_main:
            resolved = {"config": config.to_dict(), "fingerprint": fingerprint,
                        "steps": length.steps, "tokens": length.tokens,
                        "tokens_per_step": length.tokens_per_step,
                        "train_flops_per_token": length.flops_per_token,
                        "switch_step": length.switch_step,
                        "train_flops_per_token_after_switch": length.flops_per_token_after,
                        "budget_flops": length.budget_flops, "budget_convention": length.convention,
                        "params": counts, "mesh": dict(mesh.shape),
                        "attention_kinds": kind_sources(layer_kinds(config.model)),
                        "devices": jax.device_count(), "processes": jax.process_count(),
                        "peak_flops_per_device": peak, "peak_flops_source": peak_source,
                        "data": data.stats}
            fileio.write_json(os.path.join(workdir, "config.json"), resolved)

        train_fns = [stp.jit_train_step(spec, tx, schedule, t.grad_accum, state_sh, batch_sh)]
        eval_fns = [stp.jit_eval_step(spec, state_sh["params"], batch_sh)]
        fpt = [length.flops_per_token]
        if length.switch_step is not None:
            # Hybrid recipe: same parameters, switchable layers (MoBA) run as their target (full).
            spec2 = st.model_spec(switched_model_config(config.model), t.seed)
            if jax.tree.structure(spec2.param_shapes) != jax.tree.structure(spec.param_shapes):
                raise RunConfigError("train.switch_to_full_at: the switched model's parameters "
                                     "differ from the model's; a kind's switch_target must have "
                                     "exactly its parameters")
            train_fns.append(stp.jit_train_step(spec2, tx, schedule, t.grad_accum, state_sh, batch_sh))
            eval_fns.append(stp.jit_eval_step(spec2, state_sh["params"], batch_sh))
            fpt.append(length.flops_per_token_after)
        phase = lambda steps_done: int(length.switch_step is not None and steps_done > length.switch_step)
        evals = set(eval_steps(length.steps, config.eval.points))
        show = t.get("progress", True) if progress is None else progress
        bar = None
        if show and is_main:
            from tqdm.auto import tqdm
            tty = sys.stderr.isatty()
            bar = tqdm(total=length.steps, initial=start_step, desc=os.path.basename(workdir.rstrip("/")),
                       unit="step", file=sys.stderr, dynamic_ncols=True, leave=not tty,
                       mininterval=0.5 if tty else 30.0)

        last_val, last_se, loss = None, None, None
        t_interval, tokens_interval = time.perf_counter(), 0
        step = start_step
        # The NaN/inf guard stays on the device; the host reads it (and the metrics) only
        # where it must: at log, evaluation and checkpoint steps, so steps dispatch
        # asynchronously in between. A non-finite step is never checkpointed.
        seen = (jnp.asarray(-1, jnp.int32), jnp.asarray(0.0, jnp.float32))
        forbid = bool(t.get("forbid_host_sync_between_logs", False))
        between_logs = _no_host_reads if forbid else contextlib.nullcontext
        batches = _Prefetcher(train_iter, batch_sh, int(t.get("prefetch", 2)), length.steps - step)
        try:
            with _host_reads_trapped() if forbid else contextlib.nullcontext():
                while step < length.steps:
                    with between_logs():
                        batch, data_state = batches.pop()
                        state, m = train_fns[phase(step + 1)](state, batch)
                        batches.fill()       # the next batch's transfer overlaps this step
                        step += 1
                        tokens_interval += length.tokens_per_step
                        seen = _first_non_finite(seen, m["train_loss"], step)
                        is_eval = step in evals
                        preempted = distributed.preemption_requested(step) and step < length.steps
                        log_now = step % t.log_every == 0 or is_eval or step == length.steps
                        save_now = step % t.checkpoint_every == 0 or step == length.steps or preempted
                        if bar is not None:
                            bar.update(1)
                    if not (log_now or save_now):
                        continue
                    # One fetch: the guard, and at a log step the metrics too.
                    host = jax.device_get({"seen": seen, **(m if log_now else
                                                            {"train_loss": m["train_loss"]})})
                    bad_step, bad_loss = int(host["seen"][0]), float(host["seen"][1])
                    if bad_step >= 0:
                        ckpt.wait()          # the last good checkpoint, whole on disk
                        raise TrainingDivergedError(_diverged_message(bad_step, bad_loss, t, ckpt))
                    loss = float(host["train_loss"])
                    if log_now:
                        elapsed = time.perf_counter() - t_interval
                        rec = {"step": step, "tokens": step * length.tokens_per_step}
                        rec.update({f"flops_{c}": v for c, v in length.flops_at(step).items()})
                        tps = tokens_interval / max(elapsed, 1e-9)
                        rec.update(train_loss=loss, lr=float(host["lr"]),
                                   grad_norm=float(host["grad_norm"]), tokens_per_s=tps,
                                   mfu=(tps * fpt[phase(step)]["compiled"] / (peak * jax.device_count())
                                        if peak else None))
                        rec.update(_router_metrics(host))
                        if is_eval:
                            last_val, last_se = evaluate_with_se(eval_fns[phase(step)], state["params"],
                                                                 val_batches, batch_sh)
                            rec.update(val_loss=last_val, val_loss_se=last_se)
                        writer.write(rec)
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.3f}", val=f"{last_val:.3f}" if last_val else "-")
                        t_interval, tokens_interval = time.perf_counter(), 0
                    if save_now:
                        meta = {"step": step, "fingerprint": fingerprint,
                                "tokens": step * length.tokens_per_step,
                                **{f"flops_{c}": v for c, v in length.flops_at(step).items()}}
                        ckpt.save(step, state, data_state, meta)
                    if preempted:
                        ckpt.wait()
                        raise Preempted(workdir, step)
        finally:
            ckpt.wait()
            writer.close()
            if bar is not None:
                bar.close()

    summary = {"steps": length.steps, "tokens": length.tokens, "final_val_loss": last_val,
               "final_val_loss_se": last_se,
               "final_train_loss": loss,
               "n_params": counts["total"], "n_params_nonembed": counts["non_embedding"],
               "n_params_nonembed_activated": counts["non_embedding_activated"],
               "budget_flops": length.budget_flops, "convention": length.convention,
               "switch_step": length.switch_step,
               **{f"flops_per_token_{c}": v for c, v in length.mean_flops_per_token().items()},
               **{f"flops_{c}": v for c, v in length.flops_at(length.steps).items()},
               "unigram_entropy_nats": data.stats.get("unigram_entropy_nats")}
    if last_val is None:  # resumed at the very end: read the last logged validation loss
        vals = [r for r in mx.read_metrics(writer.path) if "val_loss" in r]
        summary["final_val_loss"] = vals[-1]["val_loss"] if vals else None
        summary["final_val_loss_se"] = vals[-1].get("val_loss_se") if vals else None
    if is_main:
        fileio.write_json(os.path.join(workdir, "result.json"), summary)
    ckpt.close()
    return RunResult(workdir, length.steps, length.tokens, summary["final_val_loss"], summary)
