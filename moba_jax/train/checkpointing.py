"""Orbax checkpoints: train state, data-iterator state and run metadata.

Layout: ``RUN_DIR/checkpoints/<step>/{state,data,meta}``. Restoring passes an
abstract target carrying the *current* run's shardings, so a checkpoint written
on one mesh restores onto any other mesh or device count.

A checkpoint is written whole or not at all: before saving, the free space is
checked against the state's size (a full disk raises ``OSError(ENOSPC)`` before
anything is written), and a save that fails part-way (the disk filled meanwhile,
the directory became read-only) has its half-written ``*.orbax-checkpoint-tmp*``
folder removed; the earlier checkpoints stay, and the run resumes from the latest.
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

# Room asked for beyond the state's own bytes (metadata, the data iterator's state).
_SAVE_SLACK_BYTES = 64 << 10


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
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
        (orbax would wait for it too) and the disk has room for this one."""
        self.wait()
        self._check_space(state)
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ), force=True)
        except BaseException:
            self._remove_partial()
            raise

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except BaseException:
            self._remove_partial()
            raise

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
