"""Orbax checkpoints: train state, data-iterator state and run metadata.

Layout: ``RUN_DIR/checkpoints/<step>/{state,data,meta}``. Restoring passes an
abstract target carrying the *current* run's shardings, so a checkpoint written
on one mesh restores onto any other mesh or device count.

A checkpoint is written whole or not at all: before saving, the free space is
checked against the state's size (a full disk raises ``OSError(ENOSPC)`` before
anything is written), and a save that fails part-way (the disk filled meanwhile,
the directory became read-only) has its half-written ``*.orbax-checkpoint-tmp*``
folder removed; the earlier checkpoints stay, and the run resumes from the latest.

Saves are asynchronous (orbax's ``enable_async_checkpointing``): :meth:`Checkpointer.save`
returns once the state has been copied to host memory and the step's folder made; the
files are written by a background thread while training goes on. The guarantees above
hold for an asynchronous save too:

- at most one save is in flight: :meth:`~Checkpointer.save` first waits for the
  previous one, so the free-space check sees the disk after it;
- the step's folders are made in ``save`` itself (``create_directories_asynchronously
  =False``): a directory that cannot be written fails there, at once. (Made in the
  background, a failed folder leaves orbax's other writer threads waiting for it
  forever, and the process never exits.)
- a background write that fails (the disk filled, the file system became read-only)
  raises its own error, with the path, from the next :meth:`~Checkpointer.save` or
  :meth:`~Checkpointer.wait`, after its half-written folder is removed (once orbax's
  writer threads have stopped; writes that tensorstore's own threads finish later may
  leave parts of it, synchronous saves alike: the next start removes them); the
  traceback orbax logs from its thread is not printed (the raised error says the same,
  in the entry points' one line);
- callers :meth:`~Checkpointer.wait` before they report a checkpoint as saved (a
  preemption exit) and before the run ends. A run killed while a save is in flight
  leaves that save's temporary folder, removed when the run resumes; the checkpoint
  before it is whole.

Copying to host in ``save`` makes it safe to donate the state to the next step at
once: on GPU/TPU the copy has finished when ``save`` returns; on CPU, where host and
device share memory, orbax holds a view of the buffers, and XLA does not reuse a
buffer with such a reference for a donated output (it allocates a new one).
``async_save=False`` (the trainer's ``train.async_checkpoints=False``) writes everything
before ``save`` returns.
"""
from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

# Room asked for beyond the state's own bytes (metadata, the data iterator's state).
_SAVE_SLACK_BYTES = 64 << 10


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


def _orbax_traceback(record: logging.LogRecord) -> bool:
    """Keeps a log record unless it is orbax logging an exception it then hands on
    (a background save's failure, re-raised by :meth:`Checkpointer.wait`)."""
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False)),
        )
        absl_log = logging.getLogger("absl")        # orbax logs through absl
        if _orbax_traceback not in absl_log.filters:
            absl_log.addFilter(_orbax_traceback)
        if jax.process_index() == 0 and self.partial_saves():
            self._remove_partial()      # left by a save that a crash or a full disk cut short

    def partial_saves(self) -> list[str]:
        """Folders of saves that never completed (orbax's ``*.orbax-checkpoint-tmp*``)."""
        return sorted(glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")))

    def _remove_partial(self) -> None:
        for path in self.partial_saves():
            shutil.rmtree(path, ignore_errors=True)

    def _check_space(self, state: Any) -> None:
        need = sum(x.nbytes for x in jax.tree_util.tree_leaves(state) if hasattr(x, "nbytes"))
        need = int(need / max(jax.process_count(), 1)) + _SAVE_SLACK_BYTES
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({free / 1e6:.1f} MB free, "
                          f"a checkpoint needs about {need / 1e6:.1f} MB)", self.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts an asynchronous save of ``step`` once the previous save has finished
        (raising its error, if it failed) and the disk has room for this one. Returns
        when ``state`` has been copied to host memory (it may then be donated)."""
        self.wait()
        self._check_space(state)
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ), force=True)
        except BaseException:
            self._clean_up_failed_save()
            raise

    def wait(self) -> None:
        """Waits for the save in flight, if any; raises its error (its half-written
        folder removed) if it failed."""
        try:
            self.manager.wait_until_finished()
        except BaseException:
            self._clean_up_failed_save()
            raise

    def _clean_up_failed_save(self) -> None:
        """Removes a failed save's folder once orbax's other writer threads have stopped
        (removed earlier, a thread still writing would make parts of it again)."""
        try:
            self.manager.wait_until_finished()
        except BaseException:       # the same failure again, or a second one: already raising
            pass
        self._remove_partial()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores ``(state, data_state, meta)`` at ``step`` into the shardings
        of ``abstract_state`` (a pytree of ``ShapeDtypeStruct`` with shardings)."""
        if step not in self.all_steps():
            raise CheckpointError(
                f"checkpoint step {step} does not exist in {self.directory}; "
                f"available steps: {self.all_steps() or 'none'}")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ))
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(
                f"cannot read the checkpoint at {self.directory}/{step} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); delete that step "
                "folder to resume from an earlier one, or start a fresh --workdir") from e
        return out.state, out.data, out.meta

    def close(self) -> None:
        self.manager.close()
