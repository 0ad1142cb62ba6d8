"""Shared bits of the command-line entry points: logging and clean failures."""
from __future__ import annotations

import contextlib
import logging
import sys

# Errors whose message already says what is wrong and how to fix it: the
# entry points print them on one line and exit non-zero, no traceback.
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3


def user_errors() -> tuple[type, ...]:
    from moba_jax.attention.registry import UnknownAttentionError
    from moba_jax.budget import RunConfigError
    from moba_jax.data import DataConfigError
    from moba_jax.model import ModelConfigError
    from moba_jax.sharding import MeshConfigError
    from moba_jax.train.checkpointing import CheckpointError
    from moba_jax.evaluation import EvalConfigError
    from moba_jax.sweep import SweepConfigError
    return (UnknownAttentionError, RunConfigError, DataConfigError, ModelConfigError,
            MeshConfigError, CheckpointError, SweepConfigError, EvalConfigError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "grain", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def clean_exit():
    """Turns known user errors into a one-line message and a non-zero exit."""
    from moba_jax.train.loop import TrainingDivergedError
    try:
        yield
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
