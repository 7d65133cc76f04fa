"""Terminal output of the ``recsys-dist`` command: logging, quiet frameworks, summaries.

Quiet by default, loud on request (conventions habit 18). A command prints a few lines a
person needs (what it did, the key numbers, where the outputs are, what to run next) or, with
``--json``, one compact JSON line for machines; our own log lines are bare messages; Ray,
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
MAX_JSON_ITEMS = 50  # a list or mapping longer than this is left out of --json output

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
    # Also when ray.data was imported before RAY_DATA_LOG_LEVEL was set (DEBUG: its default).
    level = os.environ.get("RAY_DATA_LOG_LEVEL", "DEBUG") if loud else logging.ERROR
    logging.getLogger("ray.data").setLevel(level)


def progress_enabled() -> bool:
    """Progress bars only for a person: stderr is a terminal and ``TQDM_DISABLE`` is unset."""
    disabled = os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")
    return not disabled and sys.stderr.isatty()


# --- results: one JSON line, or a short summary -------------------------------------------
def print_result(command: str, result: Any, args: Any, seconds: float, as_json: bool) -> None:
    """Print ``result`` of ``command``: one compact JSON line, or a few lines for a person."""
    payload = asdict(result) if is_dataclass(result) else result
    if as_json:
        print(json.dumps(compact(command, payload), separators=(",", ":"), default=str))
    else:
        print(summary(command, payload, args, seconds))


# Keys left out of --json per command (the full record stays on disk, e.g. manifest.json).
BULKY = {
    "prepare": (
        "time_histogram",
        "input_files",
        "consumed",
        "sources",
        "bad_rows",
        "skewed_users",
    ),
}


def compact(command: str, payload: Any) -> Any:
    """``payload`` without the bulky internals: the keys in :data:`BULKY` and any list or
    mapping longer than :data:`MAX_JSON_ITEMS`, at any depth."""
    if not isinstance(payload, dict):
        return payload
    dropped = set(BULKY.get(command, ()))
    return _without_bulk({k: v for k, v in payload.items() if k not in dropped})


def _without_bulk(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_bulk(v)
            for k, v in value.items()
            if not (isinstance(v, (list, tuple, dict)) and len(v) > MAX_JSON_ITEMS)
        }
    if isinstance(value, (list, tuple)):
        return [_without_bulk(v) for v in value]
    return value


def summary(command: str, payload: Any, args: Any, seconds: float) -> str:
    """A few lines for a person: what was done, the key numbers, outputs, the next command."""
    write = _SUMMARIES.get(command)
    if write is None or not isinstance(payload, dict):
        return json.dumps(payload, indent=2, sort_keys=True, default=str)
    return "\n".join(write(payload, args, seconds))


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _import_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [
        f"imported {_n(r['events'])} events and {_n(r['items'])} items ({r['format']}) "
        f"in {seconds:.1f} s",
        f"output: {r['output']} ({r['files_written']} event file(s))",
        f"next:   recsys-dist prepare --data {r['output']} --output PREPARED",
    ]


def _generate_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [
        f"generated {_n(r['events'])} events: {_n(r['users'])} users, {_n(r['items'])} items "
        f"in {r['categories']} categories (seed {r['seed']}) in {seconds:.1f} s",
        f"output: {r['output']}",
        f"next:   recsys-dist prepare --data {r['output']} --output PREPARED",
    ]


def _prepare_summary(r: dict, args: Any, seconds: float) -> list[str]:
    taken = r.get("taken", {})
    if taken.get("files") == 0:
        return [
            f"nothing new: all {taken['already_taken']} file(s) in {args.data} were taken "
            f"before; {args.output} is unchanged"
        ]
    counts = r["counts"]
    rows = ", ".join(f"{s} {_n(counts.get(f'{s}_rows', 0))}" for s in ("train", "valid", "test"))
    skipped = counts.get("bad_rows_skipped", 0)
    unreadable = counts.get("files_skipped", 0)
    return [
        f"prepared {_n(counts['users'])} users and {_n(r['num_items'])} items from "
        f"{_n(counts['events'])} events ({r['files']} file(s)) in {seconds:.1f} s",
        f"sequences: {rows} ({r['split']} split, max_len {r['max_len']})"
        + (f"; took {taken['files']} new file(s)" if taken.get("already_taken") else ""),
        f"skipped: {_n(skipped)} bad row(s)"
        + (f", {unreadable} unreadable file(s)" if unreadable else "")
        + f", {_n(counts.get('duplicates_dropped', 0))} "
        f"duplicate(s), {_n(counts.get('users_below_min_events', 0))} user(s) below "
        "min_user_events",
        *_preset_lines(counts, r["max_len"], args.output),
    ]


def _preset_lines(counts: dict, max_len: int, output: str) -> list[str]:
    """The output and the next command, with the preset that suits the data's kind; and one
    hint line first when the data was prepared at a length that does not suit it."""
    from recsys_dist.config import load_config, preset_for

    kind = preset_for(counts["events"], counts["users"])
    fits = kind is not None and load_config(kind).data.max_len == max_len
    hint = []
    if kind is not None and not fits:
        mean = counts["events"] / counts["users"]
        hint = [
            f"hint:   users average {mean:.0f} events and the model sees the last {max_len}: "
            f"`--config {kind}` fits this data (prepare and train with it)"
        ]
    preset = f"--config {kind} " if fits else ""
    return [
        *hint,
        f"output: {output}",
        f"next:   recsys-dist train {preset}--data {output} --output RUN",
    ]


def _train_summary(r: dict, args: Any, seconds: float) -> list[str]:
    from recsys_dist.train.loop import SELECTION_METRIC

    best = r["best_metrics"].get(SELECTION_METRIC)
    best_text = "n/a" if best is None else f"{best:.4f}"
    return [
        f"trained {r['epochs']} epoch(s) on {r['workers']} worker(s) in "
        f"{r['train_seconds']:.1f} s; best {SELECTION_METRIC} {best_text} "
        f"at epoch {r['best_epoch']}",
        f"run:    {r['run_dir']}",
        f"model:  {r['model_dir']}",
        f"next:   recsys-dist evaluate --run {r['run_dir']}",
    ]


def _evaluate_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [format_metrics_table(r)]


def format_metrics_table(result: dict[str, Any]) -> str:
    """HR/NDCG/MRR rows by K for the model and the popularity baseline, with the protocol."""
    ks = sorted({int(k.split("@")[1]) for k in result if "@" in k})
    header = f"{'':12}" + "".join(f"{f'{m}@{k}':>10}" for m in ("hr", "ndcg", "mrr") for k in ks)
    lines = [f"{result['split']} split, {result['users']} users, {result['protocol']}", header]
    rows = (("model", result), ("popularity", result["baseline_popularity"]))
    for name, metrics in rows:
        values = "".join(f"{metrics[f'{m}@{k}']:>10.4f}" for m in ("hr", "ndcg", "mrr") for k in ks)
        lines.append(f"{name:12}{values}")
    if "beyond_accuracy" in result:
        label = f"beyond accuracy, top-{result['beyond_accuracy']['k']}:"
        lines.append(label + "".join(f"{h:>12}" for h in _BEYOND.values()))
        for name, metrics in rows:
            figures = metrics["beyond_accuracy"]
            cells = "".join(f"{_figure(figures[key]):>12}" for key in _BEYOND)
            lines.append(f"{name:{len(label)}}{cells}")
    lines += _ratings_lines(result.get("ratings"))
    return "\n".join(lines)


def _ratings_lines(ratings: dict[str, Any] | None) -> list[str]:
    """RMSE/MAE of the model and the rating baselines (a model with a rating head)."""
    if not ratings or "model" not in ratings:
        return []
    rows = {"model": ratings["model"], **ratings["baselines"]}
    lines = [f"ratings, {ratings['rated_targets']:,} held-out events:{'rmse':>10}{'mae':>10}"]
    width = len(lines[0]) - 20
    lines += [f"{name:{width}}{e['rmse']:>10.4f}{e['mae']:>10.4f}" for name, e in rows.items()]
    return lines


# Beyond-accuracy columns (recsys_dist/evaluation/beyond.py): key -> header.
_BEYOND = {
    "coverage": "coverage",
    "popularity_percentile": "pop. pctl",
    "exposure_gini": "gini",
    "novelty": "novelty",
    "intra_list_diversity": "diversity",
}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _recommend_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = [
        f"top-{args.k} for {_n(r['users'])} users ({_n(r['rows'])} rows) in {seconds:.1f} s",
        f"output: {r['output']}",
    ]
    if r.get("unknown_items_ignored"):
        unknown = _n(r["unknown_items_ignored"])
        lines.append(f"ignored {unknown} history item(s) the model does not know")
    return lines


def _score_ratings_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = [
        f"predicted ratings of {_n(r['pairs'])} pairs ({_n(r['users'])} users) in {seconds:.1f} s",
        f"output: {r['output']}",
    ]
    if r.get("users_without_history"):
        cold = _n(r["users_without_history"])
        lines.append(f"{cold} user(s) not in the dataset: rated from an empty history")
    if r.get("unknown_items"):
        lines.append(f"{_n(r['unknown_items'])} pair(s) name an item the model does not know")
    return lines


def _interests_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = []
    analysis = r.get("analysis")
    if analysis:
        share = analysis["users_with_change_points"] / max(analysis["users"], 1)
        lines += [
            f"analysed {_n(analysis['users'])} users in {analysis['groups']} interest groups: "
            f"mean drift {analysis['mean_drift']:.3f}, {share:.0%} with change points",
            f"output: {analysis['output']}",
        ]
    evaluation = r.get("evaluation")
    if evaluation:
        methods = evaluation["methods"]
        baselines = {k: v for k, v in methods.items() if k not in ("forecast", "model_only")}
        best = min(baselines, key=lambda k: baselines[k]["js"])
        forecast, baseline = methods["forecast"], baselines[best]
        lines.append(
            f"forecast vs the best baseline ({best}) on the test future: JS "
            f"{forecast['js']:.4f} vs {baseline['js']:.4f} (lower is better), top-group "
            f"accuracy {forecast['top_accuracy']:.3f} vs {baseline['top_accuracy']:.3f}"
        )
    lines.append(f"done in {seconds:.1f} s")
    lines.append(f"next:   recsys-dist report --run {args.run} --output report.html")
    return lines


def _report_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [
        f"wrote {r['output']} ({r['bytes'] / 1024:.0f} KiB, {r['users']} users drawn) "
        f"in {seconds:.1f} s",
        "open it in a browser",
    ]


def _serve_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [f"stopped serving {r['url']}"]


def _export_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [
        f"exported {r['model_version']} ({r['quantization']}) in {seconds:.1f} s: "
        f"{_n(r['bytes'])} bytes, the fp32 export {_n(r['source_bytes'])}",
        f"output: {r['output']}",
        f"next:   recsys-dist serve --run {args.run} --model {r['output']}",
    ]


def _config_summary(r: dict, args: Any, seconds: float) -> list[str]:
    import yaml

    return [yaml.safe_dump(r, sort_keys=False).rstrip()]


def _models_summary(r: dict, args: Any, seconds: float) -> list[str]:
    action = r["action"]
    if action == "register":
        return [
            f"registered version {r['version']}",
            f"next:   recsys-dist models promote --registry {args.registry} {r['version']}",
        ]
    if action in ("promote", "rollback"):
        if not r["changed"]:
            return [f"{r['current']} is already current"]
        return [f"current: {r['current']} (was {r['previous'] or 'none'})"]
    if action == "list":
        return _versions_table(r)
    return [json.dumps(r, indent=2, sort_keys=True, default=str)]


def _versions_table(r: dict) -> list[str]:
    """One row per version: id, parent, creation time, validation NDCG@10, current marker."""
    if not r["versions"]:
        return [f"{r['registry']}: no versions yet (recsys-dist models register)"]
    lines = [f"  {'version':26}{'parent':26}{'created (UTC)':27}{'valid NDCG@10':>14}"]
    for row in r["versions"]:
        ndcg = row["metrics"].get("valid_ndcg@10")
        mark = "*" if row["current"] else " "
        lines.append(
            f"{mark} {row['version']:26}{row['parent'] or '-':26}{row['created_at']:27}"
            f"{'n/a' if ndcg is None else f'{ndcg:.4f}':>14}"
        )
    return [*lines, "* current"]


def _retrain_summary(r: dict, args: Any, seconds: float) -> list[str]:
    growth = (
        f"took {r['new_files']} new file(s): {_n(r['events'])} events, {_n(r['new_items'])} new "
        f"item(s)"
    )
    if r["candidate"] is None:
        return [f"{r['reason']}; {r['parent']} stays current"]
    verdict = "promoted" if r["promoted"] else "NOT promoted"
    return [
        growth,
        f"candidate {r['candidate']} (from {r['parent']}) {verdict}: {r['reason']}",
        f"next:   recsys-dist models list --registry {args.registry}",
    ]


def _keys_summary(r: dict, args: Any, seconds: float) -> list[str]:
    action = r["action"]
    if action == "create":
        return [
            f"created key {r['name']!r} ({', '.join(r['scopes'])}) in {args.file}",
            f"secret: {r['secret']}",
            "it is shown this once (the file keeps only its SHA-256): store it now",
            f"use:    Authorization: Bearer <secret>; the service: serve.api_keys_file={args.file}",
        ]
    if action == "revoke":
        return [f"revoked key {r['name']!r} at {r['revoked_at']}"]
    if not r["keys"]:
        return [f"{r['file']}: no keys yet (recsys-dist keys create)"]
    lines = [f"  {'name':20}{'scopes':36}{'created (UTC)':27}revoked"]
    for key in r["keys"]:
        lines.append(
            f"  {key['name']:20}{','.join(key['scopes']):36}{key['created_at']:27}"
            f"{key['revoked_at'] or '-'}"
        )
    return lines


_SUMMARIES = {
    "import": _import_summary,
    "generate": _generate_summary,
    "prepare": _prepare_summary,
    "train": _train_summary,
    "evaluate": _evaluate_summary,
    "recommend": _recommend_summary,
    "score": _recommend_summary,
    "score-ratings": _score_ratings_summary,
    "interests": _interests_summary,
    "report": _report_summary,
    "serve": _serve_summary,
    "export": _export_summary,
    "config": _config_summary,
    "models": _models_summary,
    "retrain": _retrain_summary,
    "keys": _keys_summary,
}
