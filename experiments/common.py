"""Shared bits of the command-line entry points: logging, clean failures, multi-process flags.

Exit codes: 0 done; 2 a user error (bad config, mesh, data, checkpoint, sweep
directory, or a cluster that cannot be formed), the one-line message says what
to fix; 3 training diverged; 74 a directory that cannot be written (read-only,
permission denied, disk full: the line names the path and the cause; rerun the
same command once it is fixed); 75 preempted (SIGTERM) or 130 interrupted
(Ctrl-C, SIGINT): a checkpoint was saved and relaunching the same command
resumes (75 is ``EX_TEMPFAIL``, "try again"; 130 the shell's 128 + SIGINT). A
second Ctrl-C exits at once with 130, without that checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import re
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
    from moba_jax.checks import ConfigError
    return (ConfigError, UnknownAttentionError, RunConfigError, DataConfigError, ModelConfigError,
            MeshConfigError, CheckpointError, SweepConfigError, EvalConfigError, DistributedError)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def _override_field(argv: list[str], key: str) -> str | None:
    """The ``--config.a.b.key`` override in ``argv`` whose path holds ``key``."""
    for arg in argv:
        m = re.match(r"--(config(?:\.[\w-]+)+)", arg)
        if m and key in m.group(1).split("."):
            return m.group(1)
    return None


def _config_load_error(message: str) -> str:
    """The last line of a config file's traceback that ml_collections folds into its message."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"[A-Za-z_.]*(Error|Exception)\b", ln)]
    return errs[-1] if errs else " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every way it can fail turned into one line and exit 2:
    an unknown config field (with the closest known name), a value of the wrong type,
    a config file that is missing or raises, a missing required flag."""
    from absl import flags
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        # ml_collections: an override names a field the (locked) config lacks.
        text = str(e)
        key = re.search(r"'([^'\\]+)\\?'", text)
        key = key.group(1) if key else text
        guess = re.search(r'Did you mean \\?"([^"\\]+)\\?"', text)
        field = _override_field(argv[1:], key) or f"config.{key}"
        hint = ""
        if guess:
            parts = field.split(".")
            parts[parts.index(key) if key in parts else -1] = guess.group(1)
            hint = f"did you mean --{'.'.join(parts)}? "
        _fail(f"--{field}: no such field; {hint}every field the config file defines can be "
              "overridden, see the file named by --config")
    except flags.Error as e:
        message = str(e)
        if "Error whilst parsing config file" in message:
            flag = message.split(":", 1)[0]
            _fail(f"{flag}: the config file raised {_config_load_error(message)}")
        _fail(f"{' '.join(message.split())}; see --helpshort for the flags")
    config = flags.FLAGS["config"] if "config" in flags.FLAGS else None
    if config is not None and config.present:
        try:
            getattr(config.value, "keys", None)
        except OSError as e:
            # ml_collections defers a missing config file's error to the first use.
            errno = re.search(r"\[Errno \d+\] ([^:\n]+)", str(e))
            problem = errno.group(1) if errno else _config_load_error(str(e))
            _fail(f"--config={config.config_filename}: cannot load the config file "
                  f"({problem}); give a path relative to the current directory, "
                  "e.g. configs/scaling.py")
    return rest


def run(main) -> None:
    """``absl.app.run(main)`` with :func:`parse_flags`: the entry points' ``__main__``."""
    from absl import app
    app.run(main, flags_parser=parse_flags)


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
    except Exception as e:
        _exit_on_filesystem_fault(e)
        raise


def _exit_on_filesystem_fault(e: BaseException) -> None:
    """A read-only, permission-denied or full directory behind ``e``: one line, exit 74."""
    from moba_jax import fileio
    fault = fileio.filesystem_fault(e)
    if fault is not None:
        print(f"error: {fileio.fault_message(fault)}", file=sys.stderr)
        sys.exit(fileio.EXIT_IO_ERROR)


@contextlib.contextmanager
def filesystem_faults():
    """Only the filesystem part of :func:`clean_exit`, for entry points that train
    nothing (the report): no jax import."""
    try:
        yield
    except Exception as e:
        _exit_on_filesystem_fault(e)
        raise
