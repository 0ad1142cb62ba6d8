"""Shared bits of the command-line entry points: logging, clean failures, multi-process flags.

Exit codes: 0 done; 2 a user error (bad config, mesh, data, checkpoint, sweep
directory, or a cluster that cannot be formed), the one-line message says what
to fix; 3 training diverged; 75 preempted (SIGTERM) or 130 interrupted (Ctrl-C,
SIGINT): a checkpoint was saved and relaunching the same command resumes (75 is
``EX_TEMPFAIL``, "try again"; 130 the shell's 128 + SIGINT). A second Ctrl-C
exits at once with 130, without that checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings

# Errors whose message already says what is wrong and how to fix it: the
# entry points print them on one line and exit non-zero, no traceback.
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


def user_errors() -> tuple[type, ...]:
    from moba_jax.attention.registry import UnknownAttentionError
    from moba_jax.budget import RunConfigError
    from moba_jax.data import DataConfigError
    from moba_jax.model import ModelConfigError
    from moba_jax.sharding import MeshConfigError
    from moba_jax.train.checkpointing import CheckpointError
    from moba_jax.evaluation import EvalConfigError
    from moba_jax.sweep import SweepConfigError
    from moba_jax.distributed import DistributedError
    return (UnknownAttentionError, RunConfigError, DataConfigError, ModelConfigError,
            MeshConfigError, CheckpointError, SweepConfigError, EvalConfigError, DistributedError)


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())} ({category.__name__})\n"


def setup_logging() -> None:
    """User-facing stderr of the entry points: ``warning: ...`` / ``error: ...`` lines.

    Log records at WARNING and above print as ``<level>: <message>`` (absl's
    ``I1126 12:00:00.000 ... file.py:12]`` prefix handler is replaced); Python warnings
    print as one line ``warning: <message> (<Category>)``, without the source line
    Python echoes under them. INFO lines (data pipeline, resume, cluster) appear only
    with absl's ``--verbosity=0`` (or higher) given explicitly; absl, jax, orbax and
    grain stay at WARNING either way.
    """
    from absl import flags
    verbosity = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
    verbose = verbosity is not None and verbosity.present and verbosity.value >= 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        handlers=[handler], force=True)
    for noisy in ("absl", "jax", "orbax", "grain", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.formatwarning = _one_line_warning


def define_distributed_flags() -> None:
    """Flags of the entry points that may run as one of several processes."""
    from absl import flags
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0 for multi-process jobs (else "
                        "JAX_COORDINATOR_ADDRESS or the cluster's auto-detection).")
    flags.DEFINE_integer("num_processes", None, "Number of processes in the job "
                         "(else JAX_NUM_PROCESSES or auto-detected).")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) "
                         "(else JAX_PROCESS_ID or auto-detected).")
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "auto: join a cluster only when flags, environment or a launcher "
                      "(SLURM, Open MPI, TPU pod, Kubernetes) say there are several processes; "
                      "on: always call jax.distributed.initialize(); off: never.")
    flags.DEFINE_integer("coordinator_timeout_s", 300, "Seconds to wait for all processes "
                         "to join before failing.")


def init_distributed() -> None:
    """Joins the JAX cluster from the flags of :func:`define_distributed_flags` when needed."""
    from absl import flags
    from moba_jax import distributed
    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                           mode=f.distributed, timeout_s=f.coordinator_timeout_s)


@contextlib.contextmanager
def clean_exit():
    """Turns known user errors into a one-line message and a non-zero exit, and lets
    Ctrl-C checkpoint and stop a run (exit 130) as SIGTERM does (exit 75)."""
    from moba_jax import distributed
    from moba_jax.train.loop import Preempted, TrainingDivergedError
    distributed.catch_sigint()
    try:
        yield
    except Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(distributed.EXIT_FOR_SIGNAL.get(distributed.stop_signal(), EXIT_PREEMPTED))
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
