"""The ``recsys-dist`` command: thin wrappers over the library, one sub-command per stage.

Every sub-command prints a short human summary, or one compact JSON line with ``--json``
(:mod:`recsys_dist.console`); the frameworks stay quiet unless ``-v``. Bad input (any
:class:`~recsys_dist.errors.UserInputError`) exits 2 with one line naming the file, row, field
or argument, checked before Ray starts where it can be. Every path may be local or
``s3://bucket/prefix``; S3 endpoint, region and credentials come from the standard AWS
environment variables and config files (``AWS_ENDPOINT_URL`` for MinIO and the like).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from recsys_dist import console, storage
from recsys_dist.config import load_config, presets
from recsys_dist.errors import MissingInputError, OutputExistsError, RunFailed, UserInputError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command: 0 when done, 2 with one ``error:`` line on bad input."""
    try:
        args = build_parser().parse_args(argv)
    except UserInputError as error:  # argparse's complaint, as one line
        return _bad_input(str(error))
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    console.setup(args.verbose)
    started = time.perf_counter()
    try:
        _resolve_model_source(args)
        result = args.handler(args)
    except Exception as error:  # noqa: BLE001 — a user error becomes one line, a bug is raised
        message = user_error(error)
        if message is not None:
            return _bad_input(message)
        if isinstance(error, RunFailed):  # not the input's fault: one line, exit 1
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
        raise
    console.print_result(args.command, result, args, time.perf_counter() - started, args.json)
    return 0


def _bad_input(message: str) -> int:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"error: {one_line}", file=sys.stderr)
    return EXIT_BAD_INPUT


def user_error(error: BaseException) -> str | None:
    """The message of a user error, also when Ray wrapped it in a task error; None for a bug.

    User errors are :class:`UserInputError` and its subclasses, and a ``FileNotFoundError``
    for an input path that is not there (named in the message).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)  # Ray task errors carry the original here
        if isinstance(inner, BaseException) and inner is not error:
            error = inner
            continue
        if isinstance(error, UserInputError):
            return str(error)
        if isinstance(error, FileNotFoundError):
            if error.filename is not None:
                return f"{error.filename}: {error.strerror or 'no such file or directory'}"
            return str(error)
        error = error.__cause__ or error.__context__
    return None


class _Parser(argparse.ArgumentParser):
    """Raises a usage error (one line, exit 2 in :func:`main`) instead of printing usage."""

    def error(self, message: str):
        raise UserInputError(f"{self.prog}: {message} (see {self.prog} --help)")


def _global_flags(in_subcommand: bool) -> argparse.ArgumentParser:
    """-v, --json and --address, accepted before or after the sub-command. The sub-command's
    copies default to SUPPRESS, so they set a value only when given there."""
    flags = argparse.ArgumentParser(add_help=False)
    off, none = (argparse.SUPPRESS,) * 2 if in_subcommand else (False, None)
    flags.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=off,
        help="show the frameworks' logs and progress (Ray, DeepSpeed, transformers)",
    )
    flags.add_argument(
        "--json",
        action="store_true",
        default=off,
        help="print one compact JSON line instead of a summary",
    )
    flags.add_argument("--address", default=none, help="Ray address (default: local Ray)")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsys-dist", description=__doc__, parents=[_global_flags(False)])
    parser.add_argument("--version", action="version", version=f"recsys-dist {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    flags = _global_flags(True)
    for add in (
        _add_import,
        _add_generate,
        _add_prepare,
        _add_train,
        _add_evaluate,
        _add_recommend,
        _add_score,
        _add_score_ratings,
        _add_serve,
        _add_export,
        _add_interests,
        _add_report,
        _add_config,
        _add_models,
        _add_retrain,
        _add_keys,
    ):
        add(commands, flags)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys-dist")
    except PackageNotFoundError:  # a source checkout that is not installed
        from recsys_dist import __version__

        return __version__


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


def _add_model_source(sub, pick_version: bool = True, other_export: bool = True) -> None:
    """``--run RUN [--model DIR]``, or ``--registry R [--version V]`` (default: R's current
    version).

    ``--model`` reads another export of the run's model in place of ``RUN/model`` (its int8
    export, ``recsys-dist export``); the run still gives the settings and the data.
    ``pick_version=False`` where the command follows the current version (``serve``);
    ``other_export=False`` where only the run's own export makes sense (``export`` itself).
    """
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run directory")
    source.add_argument("--registry", help="a model registry (directory or s3:// prefix)")
    if pick_version:
        sub.add_argument("--version", help="with --registry: this version (default: the current)")
    if other_export:
        described = "with --run: another export of its model, e.g. int8 (default: RUN/model)"
        sub.add_argument("--model", help=described)
    sub.set_defaults(model_source=True, version=None, model=None)


def _model_dir(args) -> str:
    """The export a command reads: ``--model`` where given (checked), else the run's own."""
    from recsys_dist import run_layout

    if args.model is None:
        return run_layout.model_dir(args.run)
    _check_model(args.model, f"--model {args.model}")
    return args.model


def _resolve_model_source(args) -> None:
    """Point ``args.run`` at the registry version asked for: a version directory is laid out
    as a run (its record, config, model and calibration), read-only."""
    if not getattr(args, "model_source", False):
        return
    if args.registry is None:
        _require(args.version is None, "--version needs --registry")
        return
    _require(getattr(args, "model", None) is None, "--model goes with --run, not --registry")
    from recsys_dist.registry import Registry

    registry = Registry(args.registry)
    version = registry.get(args.version) if args.version else registry.current()
    if version is None:
        raise MissingInputError(
            f"--registry {args.registry}: no current version (recsys-dist models promote)"
        )
    args.run = version.path


def _check_run(run: str) -> None:
    """``--run`` holds a trained run: its record and its exported model."""
    from recsys_dist import run_layout

    run_layout.run_record(run)  # raises for a directory that is not a run
    _check_model(run_layout.model_dir(run), f"--run {run}")


def _check_model(model: str, flag: str) -> None:
    from recsys_dist.checkpoint import STATE_FILE

    if not storage.exists(storage.join(model, STATE_FILE)):
        raise MissingInputError(f"{flag}: no exported model in {model} (no {STATE_FILE})")


def _check_prepared(data: str | None) -> None:
    """``--data``, when given, is a prepared dataset (``recsys-dist prepare``'s output)."""
    from recsys_dist.data.prepared import load_manifest

    if data is not None:
        load_manifest(data)


def _check_k(k: int) -> None:
    _require(k >= 1, f"--k must be >= 1, got {k}")


def _add_import(commands, flags):
    sub = commands.add_parser(
        "import", help="convert a log to a canonical dataset directory", parents=[flags]
    )
    sub.add_argument(
        "--format", required=True, choices=["recbole", "movielens", "csv", "parquet", "sasrec"]
    )
    sub.add_argument("input")
    sub.add_argument("--output", required=True)
    sub.add_argument(
        "--map",
        nargs="*",
        default=[],
        metavar="CANONICAL=SOURCE",
        help="column mapping, e.g. user_id=uid item_id=movie timestamp=ts",
    )
    sub.add_argument("--delimiter", default=",")
    sub.add_argument("--timestamp-unit", default="s", choices=["s", "ms", "us", "ns"])
    sub.add_argument("--overwrite", action="store_true")
    sub.set_defaults(handler=_run_import)
    return sub


def _add_generate(commands, flags):
    sub = commands.add_parser(
        "generate", help="a synthetic log whose interests drift", parents=[flags]
    )
    sub.add_argument("--output", required=True)
    sub.add_argument("--users", type=int, default=1000)
    sub.add_argument("--items", type=int, default=500)
    sub.add_argument("--categories", type=int, default=10)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument(
        "--drift-paths",
        type=float,
        default=0.0,
        help="chance a drifting user's new category is a common path out of the old one",
    )
    sub.add_argument(
        "--break-days",
        type=float,
        default=0.0,
        help="every user takes one break this long (to twice it); abrupt shifts start after it",
    )
    sub.add_argument("--overwrite", action="store_true")
    sub.set_defaults(handler=_run_generate)
    return sub


def _add_prepare(commands, flags):
    sub = commands.add_parser(
        "prepare", help="events → split sequence dataset (Ray Data)", parents=[flags]
    )
    sub.add_argument("--data", required=True)
    sub.add_argument("--output", required=True)
    sub.add_argument("--max-len", type=int)
    sub.add_argument("--split", choices=["loo", "time"])
    sub.add_argument(
        "--holdout-events", type=int, help="loo: events held out per user for test and for valid"
    )
    sub.add_argument("--on-bad-rows", choices=["error", "skip"])
    sub.add_argument("--min-user-events", type=int)
    sub.add_argument(
        "--append",
        action="store_true",
        help="add --data (new log partitions) to the dataset in --output, keeping its settings",
    )
    _add_config_args(sub)
    sub.set_defaults(handler=_run_prepare)
    return sub


def _add_train(commands, flags):
    sub = commands.add_parser(
        "train", help="train BERT4Rec with Ray Train + DeepSpeed", parents=[flags]
    )
    sub.add_argument("--data", required=True, help="a prepared dataset")
    sub.add_argument("--output", required=True, help="the run directory")
    sub.add_argument("--workers", type=int)
    sub.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what --output holds and start afresh (a rerun otherwise resumes it)",
    )
    _add_config_args(sub)
    sub.set_defaults(handler=_run_train)
    return sub


def _add_evaluate(commands, flags):
    sub = commands.add_parser(
        "evaluate", help="HR/NDCG/MRR@5/10/20 of a trained run", parents=[flags]
    )
    _add_model_source(sub)
    sub.add_argument("--split", default="test", choices=["valid", "test"])
    sub.add_argument("--data", help="prepared dataset (default: the one the run trained on)")
    sub.add_argument("--keep-seen", action="store_true", help="rank already-seen items too")
    sub.add_argument(
        "--sampled",
        type=int,
        metavar="N",
        help="rank against N sampled negatives instead of the full catalogue (0); "
        "default: the run's eval.sampled_negatives",
    )
    sub.add_argument(
        "--sampling",
        choices=["uniform", "popularity"],
        help="how negatives are sampled; default: the run's eval.sampling",
    )
    sub.add_argument("--output", help="also write the metrics to this JSON file")
    _add_config_args(sub)  # on top of the run's own eval settings (RUN/config.yaml)
    sub.set_defaults(handler=_run_evaluate)
    return sub


def _add_recommend(commands, flags):
    sub = commands.add_parser(
        "recommend", help="top-K for histories given as events", parents=[flags]
    )
    _add_model_source(sub)
    sub.add_argument("--histories", required=True, help="Parquet events: user_id,item_id,timestamp")
    sub.add_argument("--k", type=int, default=10)
    sub.add_argument("--output", required=True)
    sub.add_argument("--keep-seen", action="store_true")
    sub.add_argument(
        "--explain",
        action="store_true",
        help="add a 'because' column: the history events each item owes its score to "
        "(leave-one-out; costs one more forward pass over max_len sequences per user)",
    )
    sub.add_argument(
        "--rank-by",
        choices=["score", "rating"],
        default="score",
        help="'rating': rank by predicted rating (a model trained with ratings); "
        "the score column is then the rating",
    )
    _add_config_args(sub)  # on top of the run's own data and eval settings
    sub.set_defaults(handler=_run_recommend)
    return sub


def _predicts_ratings(model_dir: str) -> bool:
    """Whether an export has a rating head (its config.json says so; no weights loaded)."""
    from recsys_dist import storage

    return bool(storage.read_json(storage.join(model_dir, "config.json")).get("rating_head"))


def _add_score(commands, flags):
    sub = commands.add_parser(
        "score", help="top-K for every user of a prepared dataset", parents=[flags]
    )
    _add_model_source(sub)
    sub.add_argument("--data", help="prepared dataset (default: the run's)")
    sub.add_argument("--k", type=int, default=10)
    sub.add_argument("--output", required=True, help="Parquet file: user_id, rank, item_id, score")
    sub.add_argument("--keep-seen", action="store_true")
    _add_config_args(sub)  # on top of the run's own eval settings
    sub.set_defaults(handler=_run_score)
    return sub


def _add_score_ratings(commands, flags):
    sub = commands.add_parser(
        "score-ratings",
        help="predicted ratings of (user, item) pairs, from the users' histories",
        parents=[flags],
    )
    _add_model_source(sub)
    sub.add_argument("--pairs", required=True, help="Parquet file: user_id, item_id")
    sub.add_argument(
        "--data", help="prepared dataset with the users' histories (default: the run's)"
    )
    sub.add_argument(
        "--output",
        required=True,
        help="Parquet file: user_id, item_id, predicted_rating, history_events",
    )
    sub.set_defaults(handler=_run_score_ratings)
    return sub


def _run_score_ratings(args):
    _check_run(args.run)
    model = _model_dir(args)
    _check_prepared(args.data)
    from recsys_dist import run_layout
    from recsys_dist.inference.rating_pairs import read_pairs, score_ratings

    pairs = read_pairs(args.pairs)  # a bad file is named before Ray starts
    init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    return score_ratings(model, data, pairs, args.output)


def _add_serve(commands, flags):
    sub = commands.add_parser(
        "serve",
        help="online recommendations over HTTP (Ray Serve), real-time interest updates",
        parents=[flags],
    )
    _add_model_source(sub, pick_version=False)  # --registry: follow its current version
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host beyond loopback without API keys (serve.api_keys_file)",
    )
    _add_config_args(sub)
    sub.set_defaults(handler=_run_serve)
    return sub


def _add_config_args(sub) -> None:
    sub.add_argument(
        "--config",
        help="YAML config (sections data/model/train/eval/...), or a preset for a kind of data: "
        + ", ".join(presets()),
    )
    sub.add_argument("overrides", nargs="*", metavar="section.key=value")


def _config(args, base: Sequence[str] = (), **flags: Any):
    """``base`` settings, the YAML config, ``key=value`` overrides, explicit flags (which win)."""
    return load_config(args.config, [*base, *args.overrides, *_flag_overrides(flags)])


def _flag_overrides(flags: dict[str, Any]) -> list[str]:
    """``key=value`` for each flag that was given (not None)."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def init_ray(address: str | None, min_cpus: int = 1) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Locally, Ray gets at least ``min_cpus`` logical CPUs so that Ray Data has room to stream
    while every training worker holds one. A local Ray inherits this process's environment,
    so its workers see the same AWS settings for ``s3://`` paths; on a cluster every node
    needs them (environment or an IAM role), see docs/architecture.md "Object storage".
    Unless ``-v``, Ray logs only errors and its workers run :func:`console.quiet_worker`.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options = console.ray_init_options()
    if address:
        ray.init(address=address, log_to_driver=True, **options)
    else:
        num_cpus = max(os.cpu_count() or 1, min_cpus)
        console.local_ray_environment(num_cpus)
        # The dashboard serves the State API that Ray Train uses to clean up after a failed run.
        ray.init(num_cpus=num_cpus, **options)
    console.quiet_ray_data()


def _run_import(args):
    from recsys_dist.data.importers import import_dataset

    for pair in args.map:
        _require("=" in pair, f"--map {pair!r}: expected CANONICAL=SOURCE, e.g. user_id=uid")
    mapping = dict(pair.split("=", 1) for pair in args.map)
    return import_dataset(
        args.format,
        args.input,
        args.output,
        mapping,
        args.delimiter,
        args.timestamp_unit,
        overwrite=args.overwrite,
    )


def _run_generate(args):
    from recsys_dist.data import synthetic
    from recsys_dist.data.importers import check_output_dir

    synthetic.check_arguments(
        args.users,
        args.items,
        args.categories,
        drift_paths=args.drift_paths,
        break_days=args.break_days,
    )
    check_output_dir(args.output, synthetic.OUTPUT_DIRS, args.overwrite)
    init_ray(args.address)
    return synthetic.generate_dataset(
        args.output,
        users=args.users,
        items=args.items,
        categories=args.categories,
        seed=args.seed,
        drift_paths=args.drift_paths,
        break_days=args.break_days,
        overwrite=args.overwrite,
    )


def _run_prepare(args):
    from recsys_dist.data.events import event_files
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.prepared import load_manifest

    event_files(args.data)  # the input is there before Ray starts
    stored: list[str] = []
    if args.append:  # an appended partition keeps the dataset's settings unless told otherwise
        kept = load_manifest(args.output)["config"]
        stored = [f"data.{k}={json.dumps(v)}" for k, v in kept.items() if k != "on_bad_rows"]
    config = _config(
        args,
        stored,
        **{
            "data.max_len": args.max_len,
            "data.split": args.split,
            "data.holdout_events": args.holdout_events,
            "data.on_bad_rows": args.on_bad_rows,
            "data.min_user_events": args.min_user_events,
        },
    )
    init_ray(args.address)
    return prepare_dataset(args.data, args.output, config.data, append=args.append)


def _run_train(args):
    _check_prepared(args.data)
    from recsys_dist.train.trainer import dataset_config, train  # DeepSpeed: seconds to import

    flags = {"train.workers": args.workers, "train.use_gpu": True if args.gpu else None}
    # data.* is the dataset's own (its manifest): --config and overrides set the rest, and
    # one of theirs that disagrees with the data is refused.
    config = dataset_config(args.data, args.config, [*args.overrides, *_flag_overrides(flags)])

    if args.overwrite:
        _refuse_to_overwrite(args.output, args.data)  # before Ray starts
    init_ray(args.address, min_cpus=int(config.train.workers * config.train.cpus_per_worker) + 2)
    return train(args.data, args.output, config, overwrite=args.overwrite)


def _refuse_to_overwrite(output: str, data: str) -> None:
    """``train --overwrite`` deletes ``--output``, which must hold a run and nothing more. A
    model registry and the service's write-ahead log are defined by stages after training
    (which the trainer may not import), so they are checked here, then the trainer's own
    rules, on one listing: all of a run (tens of files), only the top of anything else (which
    is refused either way: no walk of a large tree just to name what it holds)."""
    from recsys_dist import run_layout
    from recsys_dist.registry import registry_files
    from recsys_dist.serving.event_log import LOCK_FILE, WAL_SUFFIX
    from recsys_dist.train.trainer import check_overwrite

    if not storage.exists(output):
        return
    files = storage.list_files(output, "", recursive=run_layout.is_run(output))
    held = registry_files(files)
    what = "a model registry"
    if not held:
        held = [f for f in files if f.endswith(WAL_SUFFIX) or f.rsplit("/", 1)[-1] == LOCK_FILE]
        what = "an event log's write-ahead log"
    if held:
        raise OutputExistsError(
            f"--overwrite would delete {output}, which holds {what} ({held[0]}); "
            "choose another --output, or move it out first"
        )
    check_overwrite(output, data, files)


def _run_evaluate(args):
    _check_run(args.run)
    model = _model_dir(args)
    _check_prepared(args.data)
    sampled = args.sampled
    _require(sampled is None or sampled >= 0, f"--sampled must be >= 0, got {sampled}")
    from recsys_dist.evaluation.evaluate import evaluate_run
    from recsys_dist.run_layout import saved_settings

    config = _config(
        args,
        saved_settings(args.run, ["eval"], args.config),
        **{
            "eval.exclude_seen": False if args.keep_seen else None,
            "eval.sampled_negatives": args.sampled,
            "eval.sampling": args.sampling,
        },
    )
    init_ray(args.address)
    result = evaluate_run(args.run, args.split, config.eval, args.data, model)
    if args.output:  # the numbers, for a pipeline step or a dashboard to pick up
        storage.write_json(args.output, result)
    return result


def _run_recommend(args):
    from recsys_dist.data.events import event_files

    _check_run(args.run)
    model = _model_dir(args)
    _check_k(args.k)
    event_files(args.histories)  # there, with Parquet files, before Ray starts
    from recsys_dist import run_layout
    from recsys_dist.inference.batch import recommend_histories

    if args.rank_by == "rating":
        _require(not args.explain, "--explain explains next-item scores: not with --rank-by rating")
        _require(
            _predicts_ratings(model),
            f"--rank-by rating: {args.run}'s model was trained without ratings",
        )

    config = _config(
        args,
        run_layout.saved_settings(args.run, ["data", "eval"], args.config),
        **{"eval.exclude_seen": False if args.keep_seen else None},
    )
    init_ray(args.address)
    return recommend_histories(
        model,
        args.histories,
        args.output,
        args.k,
        exclude_seen=config.eval.exclude_seen,
        data=config.data,
        explain=args.explain,
        rank_by=args.rank_by,
    )


def _run_score(args):
    _check_run(args.run)
    model = _model_dir(args)
    _check_prepared(args.data)
    _check_k(args.k)
    from recsys_dist import run_layout
    from recsys_dist.inference.batch import score_prepared

    config = _config(
        args,
        run_layout.saved_settings(args.run, ["eval"], args.config),
        **{"eval.exclude_seen": False if args.keep_seen else None},
    )
    init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    return score_prepared(model, data, args.output, args.k, config.eval.exclude_seen)


def _run_serve(args):
    _check_run(args.run)
    if args.model is not None:
        _model_dir(args)
    _require(1 <= args.port <= 65535, f"--port must be in [1, 65535], got {args.port}")
    from recsys_dist.serving.app import run_service, use_haproxy_ingress

    config = _config(args)
    _require(
        _is_loopback(args.host) or config.serve.api_keys_file or args.insecure,
        f"--host {args.host}: the service would answer beyond this machine without "
        "authentication; create keys (recsys-dist keys create --file KEYS ...) and give "
        "serve.api_keys_file=KEYS, or pass --insecure",
    )
    use_haproxy_ingress()  # effective when init_ray starts a local Ray
    init_ray(args.address, min_cpus=2)
    url = run_service(
        *(args.run, config.serve, args.host, args.port, args.model),
        interests=config.interests,
        registry=args.registry,
    )
    started = {"url": url, "docs": f"{url}/docs"}
    print(json.dumps(started, separators=(",", ":")) if args.json else f"serving on {url}")
    sys.stdout.flush()
    _wait_for_interrupt()
    return {"url": url, "stopped": True}


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM; the service keeps running in Ray meanwhile."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


def _add_export(commands, flags):
    sub = commands.add_parser(
        "export",
        help="a smaller serving artefact of a run's model: int8 weights (serve --model DIR)",
        parents=[flags],
    )
    _add_model_source(sub, other_export=False)
    sub.add_argument("--quantize", required=True, help="the weights' format: int8")
    sub.add_argument("--output", required=True, help="the new export's directory")
    sub.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    sub.set_defaults(handler=_run_export)
    return sub


def _run_export(args):
    from recsys_dist import run_layout
    from recsys_dist.inference.quantize import check_scheme, export_quantized

    check_scheme(args.quantize)
    _check_run(args.run)
    model = run_layout.model_dir(args.run)
    return export_quantized(model, args.output, args.quantize, overwrite=args.overwrite)


def _add_interests(commands, flags):
    sub = commands.add_parser(
        "interests",
        help="interest trajectories, drift, change points and forecasts per user (Ray Data)",
        parents=[flags],
    )
    _add_model_source(sub, other_export=False)
    sub.add_argument("--data", help="prepared dataset (default: the run's)")
    sub.add_argument("--users", nargs="+", metavar="USER_ID", help="only these users")
    sub.add_argument("--output", help="directory for interests.parquet and groups.json")
    sub.add_argument(
        "--evaluate",
        action="store_true",
        help="fit the forecast on the validation future and score it and the baselines on "
        "the test future (saved as RUN/interests.json; done anyway when that file is missing)",
    )
    _add_config_args(sub)
    sub.set_defaults(handler=_run_interests)
    return sub


def _run_interests(args):
    from recsys_dist import run_layout, storage
    from recsys_dist.interests.evaluate import evaluate_interests
    from recsys_dist.interests.offline import analyse_users

    _require(bool(args.output or args.evaluate), "give --output DIR, --evaluate, or both")
    _check_run(args.run)
    evaluates = args.evaluate or not storage.exists(run_layout.interests_file(args.run))
    _require(
        not (args.registry and evaluates),
        "a registry version is read-only: evaluate interests on the run before registering it",
    )
    _check_prepared(args.data)
    config = _config(args).interests
    init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    result: dict[str, Any] = {}
    if evaluates:
        result["evaluation"] = evaluate_interests(args.run, data, config)
    if args.output:
        result["analysis"] = asdict(analyse_users(args.run, data, args.output, config, args.users))
    return result


def _add_report(commands, flags):
    sub = commands.add_parser(
        "report",
        help="one self-contained HTML page: training, metrics, interest trajectories",
        parents=[flags],
    )
    sub.add_argument("--run", required=True)
    sub.add_argument("--data", help="prepared dataset (default: the run's)")
    sub.add_argument("--output", required=True, help="the HTML file to write")
    sub.add_argument("--users", type=int, default=6, help="users drawn in detail")
    _add_config_args(sub)
    sub.set_defaults(handler=_run_report)
    return sub


def _run_report(args):
    _require(args.users >= 0, f"--users must be >= 0, got {args.users}")
    _check_run(args.run)
    _check_prepared(args.data)
    from recsys_dist.report.collect import collect_report
    from recsys_dist.report.html import render_report

    config = _config(args)
    init_ray(args.address)
    data = collect_report(args.run, config, args.data, args.users)
    page = render_report(data)
    storage.write_text(args.output, page)
    return {"output": args.output, "bytes": len(page.encode()), "users": len(data.users)}


def _add_config(commands, flags):
    sub = commands.add_parser("config", help="the resolved config", parents=[flags])
    actions = sub.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser(
        "show", help="print the config with every default, as YAML", parents=[flags]
    )
    _add_config_args(show)
    show.set_defaults(handler=_run_config_show)
    return sub


def _run_config_show(args):
    """The config a command given ``--config`` and these overrides would run with (secrets
    redacted, as in a run's saved config)."""
    return _config(args).public_dict()


def _add_action_group(commands, flags, command: str, text: str, helps: dict, handler) -> dict:
    """``recsys-dist COMMAND ACTION``: one sub-parser per action (``args.action``), all run
    by ``handler``; returns them by name for their own arguments."""
    sub = commands.add_parser(command, help=text)
    actions = sub.add_subparsers(dest="action", required=True)
    parsers = {}
    for name, action_help in helps.items():
        parsers[name] = actions.add_parser(name, help=action_help, parents=[flags])
        parsers[name].set_defaults(handler=handler)
    return parsers


def _add_models(commands, flags):
    helps = {
        "register": "copy a trained run into a new immutable version",
        "list": "every version, oldest first, and which is current",
        "show": "one version's record: lineage, metrics, code, config",
        "promote": "make a version current (what `serve --registry` serves)",
        "rollback": "make the previous current version current again",
    }
    text = "the model registry: register, list, show, promote, roll back"
    parsers = _add_action_group(commands, flags, "models", text, helps, _run_models)
    for action in parsers.values():
        action.add_argument("--registry", required=True, help="registry directory or s3:// prefix")
    parsers["register"].add_argument("--run", required=True, help="a trained run directory")
    parsers["register"].add_argument("--parent", help="the version it was warm-started from")
    for name in ("show", "promote"):
        parsers[name].add_argument("version")


def _run_models(args):
    from recsys_dist.registry import Registry

    registry = Registry(args.registry)
    action = args.action
    if action == "register":
        _check_run(args.run)
        version = registry.register(args.run, parent=args.parent)
        return {"action": action, "version": version.id, "path": version.path}
    if action == "list":
        current = registry.current()
        current_id = current.id if current else None
        rows = [_version_row(v, current_id) for v in registry.versions()]
        return {
            "action": action,
            "registry": registry.root,
            "current": current_id,
            "versions": rows,
        }
    if action == "show":
        version = registry.get(args.version)
        current = registry.current()
        return {
            **version.record,
            "action": action,
            "current": bool(current and current.id == version.id),
        }
    if action == "promote":
        return {"action": action, **registry.promote(args.version)}
    return {"action": action, **registry.rollback()}


def _version_row(version, current: str | None) -> dict:
    record = version.record
    return {
        "version": version.id,
        "parent": record["parent"],
        "created_at": record["created_at"],
        "current": version.id == current,
        "metrics": record["metrics"],
    }


def _add_retrain(commands, flags):
    sub = commands.add_parser(
        "retrain",
        help="one turn of the loop: new events -> warm-started candidate -> gate -> promote",
        parents=[flags],
    )
    sub.add_argument("--registry", required=True, help="the registry (its current version)")
    sub.add_argument(
        "--events",
        required=True,
        action="append",
        help="an event-log folder (repeatable); only files not taken before are read",
    )
    sub.add_argument(
        "--output", help="the loop's dataset and runs (default: retraining/ beside the registry)"
    )
    sub.add_argument("--workers", type=int)
    sub.add_argument(
        "--when-drift",
        type=float,
        metavar="SHARE",
        help="train only when this share of the users active since the parent's data drifted "
        "(retrain.when_drift; drift above retrain.drift_threshold)",
    )
    sub.add_argument("overrides", nargs="*", help="section.key=value on the parent's settings")
    sub.set_defaults(handler=_run_retrain)
    return sub


def _run_retrain(args):
    for events in args.events:
        _require(storage.exists(events), f"--events {events}: no such directory")
    from recsys_dist.registry import Registry
    from recsys_dist.retrain import parent_version, retrain

    overrides = [*args.overrides, *([f"train.workers={args.workers}"] if args.workers else [])]
    if args.when_drift is not None:
        overrides.append(f"retrain.when_drift={args.when_drift}")
    load_config(None, overrides)  # a bad override fails before Ray starts
    parent_version(Registry(args.registry))  # no version to start from: fail before Ray
    init_ray(args.address, min_cpus=4)
    return retrain(args.registry, args.events, args.output, overrides)


def _add_keys(commands, flags):
    helps = {
        "create": "add a key; its secret is printed once and stored only as a SHA-256",
        "list": "every key: name, scopes, created, revoked (never a secret)",
        "revoke": "revoke a key by name (the service stops taking it within a reload)",
    }
    text = "API keys for the service: create, list, revoke"
    parsers = _add_action_group(commands, flags, "keys", text, helps, _run_keys)
    for action in parsers.values():
        action.add_argument("--file", required=True, help="the keys file (local or s3://)")
    parsers["create"].add_argument("--name", required=True)
    parsers["create"].add_argument(
        "--scopes", required=True, help="comma-separated: recommend, events:write, users:read"
    )
    parsers["revoke"].add_argument("name")


def _run_keys(args):
    from recsys_dist.serving.auth import KeysFile

    keys = KeysFile(args.file)
    action = args.action
    if action == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        secret = keys.create(args.name, scopes)
        return {"action": action, "name": args.name, "scopes": scopes, "secret": secret}
    if action == "list":
        return {"action": action, "file": keys.path, "keys": [k.public() for k in keys.keys()]}
    return {"action": action, **keys.revoke(args.name).public()}


if __name__ == "__main__":
    sys.exit(main())
