"""Orbax checkpoints: train state, data-iterator state and run metadata.

Layout: ``RUN_DIR/checkpoints/<step>/{state,data,meta}``. Restoring passes an
abstract target carrying the *current* run's shardings, so a checkpoint written
on one mesh restores onto any other mesh or device count.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        ), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

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
