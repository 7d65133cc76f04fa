"""Terminal output of the ``recsys-dist`` command: logging, quiet frameworks, printing.

Quiet by default, loud on request (conventions habit 18). A command prints a few lines a
person needs (what it did, the key numbers, where the outputs are, what to run next: each
command's summary lives beside it, in ``recsys_dist/cli/``) or, with ``--json``, one compact
JSON line for machines (:func:`print_result`); our own log lines are bare messages; Ray,
Ray Data, Ray Train, DeepSpeed and transformers keep their INFO chatter and their Python
warnings to themselves. ``-v`` brings all of it back, and our DEBUG lines.

The frameworks log from many processes, and each configures its loggers its own way, so
each is quieted with the knob it reads:

* Ray (driver): ``ray.init(logging_level=ERROR)`` (:func:`ray_init_options`).
* Ray Data: ``RAY_DATA_LOG_LEVEL`` (read when ``ray.data`` is imported, in every process)
  and the driver's ``DataContext`` (progress bars, execution-plan and stats logs).
* Ray Train: its ``RunConfig(logging_config=...)`` level, which the trainer takes from the
  driver's ``ray.train`` logger (set here) and applies in the controller and the workers.
* transformers: ``TRANSFORMERS_VERBOSITY``.
* DeepSpeed and Ray Serve log through one logger object each, so a filter on it survives
  their own set-up at import; Python warnings raised from the frameworks are ignored.

Environment variables and the worker hook reach Ray's workers through the environment a
local Ray inherits and through the job's ``runtime_env`` (``env_vars`` and
``worker_process_setup_hook`` = :func:`quiet_worker`), which :func:`ray_init_options` adds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, is_dataclass
from typing import Any

PACKAGE_LOGGER = "recsys_dist"
WORKER_SETUP_HOOK = f"{__name__}.quiet_worker"  # imported by module path in every worker
# Read by the frameworks when they load, in this process and in Ray's workers.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "RAY_DATA_LOG_LEVEL": "ERROR",
    # Ray Train's workers turn every print into an INFO line of the root logger, which no
    # filter of ours reaches; without it, the train loop catches DeepSpeed's prints itself.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# Frameworks that log through one logger object: a filter on it keeps only errors. Serve's
# is filtered in the driver only: its replicas' access logs stay (console and log files).
FILTERED_LOGGERS = ("DeepSpeed",)
DRIVER_FILTERED_LOGGERS = ("ray.serve",)
# Ray Train logs each report ("Reporting training result N: ...") through loggers named by
# their file's path, outside `ray.train`, so its LoggingConfig does not reach them.
RAY_FILE_LOGGERS = ("train/v2/_internal/execution/context.py", "train/collective/collectives.py")
# Our level for Ray Train's logger in the driver; the trainer passes it on to its workers.
RAY_TRAIN_LOGGER, RAY_TRAIN_QUIET_LEVEL = "ray.train", logging.WARNING
# Python warnings raised from these packages are ignored unless -v.
FRAMEWORK_MODULES = r"(ray|deepspeed|transformers|torch|pyarrow|pandas)(\.|$)"
# The raylet warns when more than 4x this many worker processes have started (a false alarm
# for Ray Train + Ray Data on a few cores, and there is no switch for it); a local Ray gets
# at least this much so it fires only past 4 x 8 processes.
STARTUP_CONCURRENCY = 8

_state: dict[str, Any] = {"verbose": False}


# --- logging and the frameworks --------------------------------------------------------------
class _ShortFormatter(logging.Formatter):
    """INFO as the bare message; warnings and errors prefixed like the CLI's own errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _ErrorsOnly(logging.Filter):
    """Keeps a framework's errors, drops the rest (unless -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(verbose: bool) -> None:
    """Configure this process's output; safe to call again (each ``cli.main`` does)."""
    _state["verbose"] = verbose
    ours = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in ours.handlers if isinstance(h, _StderrHandler)]:
        ours.removeHandler(handler)
    handler = _StderrHandler()
    long_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(long_format) if verbose else _ShortFormatter())
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False  # printed once, by the handler above
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    if verbose:
        for name in _state.pop("env_set", ()):
            os.environ.pop(name, None)  # ours, from an earlier quiet call in this process
        logging.getLogger(RAY_TRAIN_LOGGER).setLevel(logging.NOTSET)
        loud = _StderrHandler()  # other libraries' INFO lines, with their logger's name
        loud.setFormatter(logging.Formatter(long_format))
        root.addHandler(loud)
        root.setLevel(logging.INFO)
    else:
        _quiet_environment()
        logging.getLogger(RAY_TRAIN_LOGGER).setLevel(RAY_TRAIN_QUIET_LEVEL)
        root.setLevel(logging.WARNING)
    _filter_frameworks(FILTERED_LOGGERS + DRIVER_FILTERED_LOGGERS, quiet=not verbose)
    if not progress_enabled():
        os.environ["TQDM_DISABLE"] = "1"  # our tqdm bars (data/parallel.py) read it


def is_verbose() -> bool:
    return _state["verbose"]


def _quiet_environment() -> None:
    """:data:`QUIET_ENV` in this process (what a local Ray inherits), unless set already."""
    unset = [name for name in QUIET_ENV if name not in os.environ]
    _state["env_set"] = [*_state.get("env_set", ()), *unset]
    os.environ.update({name: QUIET_ENV[name] for name in unset})


def quiet_worker() -> None:
    """``worker_process_setup_hook`` of a quiet job: run by Ray in each worker at start-up."""
    import ray

    files = [os.path.join(os.path.dirname(ray.__file__), *m.split("/")) for m in RAY_FILE_LOGGERS]
    _filter_frameworks((*FILTERED_LOGGERS, *files), quiet=True)


def _filter_frameworks(names: tuple[str, ...], quiet: bool) -> None:
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _ErrorsOnly)]:
            logger.removeFilter(old)
        if quiet:
            logger.addFilter(_ErrorsOnly())
    if quiet:
        _ignore_framework_warnings()


def _ignore_framework_warnings() -> None:
    """Python warnings raised from the frameworks, ignored; again once Ray is imported, whose
    own filter for its deprecation warnings goes in front of ours."""
    for category in (DeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=FRAMEWORK_MODULES)


def ray_init_options() -> dict[str, Any]:
    """Keyword arguments for ``ray.init``: Ray's driver log level, and the job's quiet
    ``runtime_env`` (none with -v)."""
    if is_verbose():
        return {}
    _quiet_environment()  # also when a caller starts Ray before `cli.main` (jobs, benches)
    options: dict[str, Any] = {"logging_level": logging.ERROR}
    # A job from `ray job submit` owns its runtime_env (ours could conflict with it); it can
    # name the hook (recsys_dist.console.quiet_worker) and QUIET_ENV in its own.
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        options["runtime_env"] = {
            "env_vars": dict(QUIET_ENV),
            "worker_process_setup_hook": WORKER_SETUP_HOOK,
        }
    return options


def local_ray_environment(num_cpus: int) -> None:
    """Settings a local Ray's raylet reads from this process's environment when it starts."""
    concurrency = max(STARTUP_CONCURRENCY, num_cpus)
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(concurrency))
    # Ray Data reads Parquet footers on a pool of actors, 32 by default, started for every
    # read: on a small machine that start costs seconds per read (a 60-user dataset's split:
    # 4-6 s, 1.2 s with 2 actors, on 2 cores; docs/benchmarks.md). One per two CPUs here.
    footer_actors = max(1, min(32, num_cpus // 2))
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", str(footer_actors))


def quiet_ray_data() -> None:
    """Ray Data's progress bars and execution logs only with -v (bars only on a terminal)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    loud = is_verbose()
    context.enable_progress_bars = loud and progress_enabled()
    context.enable_operator_progress_bars = loud and progress_enabled()
    context.print_on_execution_start = loud
    context.verbose_stats_logs = loud
    if not loud:
        _ignore_framework_warnings()
    # Also when ray.data was imported before RAY_DATA_LOG_LEVEL was set (DEBUG: its default).
    level = os.environ.get("RAY_DATA_LOG_LEVEL", "DEBUG") if loud else logging.ERROR
    logging.getLogger("ray.data").setLevel(level)


def progress_enabled() -> bool:
    """Progress bars only for a person: stderr is a terminal and ``TQDM_DISABLE`` is unset."""
    disabled = os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")
    return not disabled and sys.stderr.isatty()


# --- results: one JSON line, or a short summary -------------------------------------------
def print_result(result: Any, as_json: bool = False, lines: list[str] | None = None) -> None:
    """Print a command's result: one compact JSON line (``as_json``: all of ``result``, however
    long), else the summary ``lines`` for a person, else ``result`` as indented JSON."""
    payload = asdict(result) if is_dataclass(result) else result
    if as_json:
        print(json.dumps(payload, separators=(",", ":"), default=str))
    elif lines is not None:
        print("\n".join(lines))
    else:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
