"""The ``recsys-dist`` command: thin wrappers over the library, one sub-command per stage.

Every sub-command logs progress, prints a human summary, or one JSON object with ``--json``,
and exits 2 with a one-line message naming the file/row/field on bad input. Every path may be
local or ``s3://bucket/prefix``; S3 endpoint, region and credentials come from the standard
AWS environment variables and config files (``AWS_ENDPOINT_URL`` for MinIO and the like).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from recsys_dist.config import ConfigError, load_config

logger = logging.getLogger("recsys_dist")

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.handler(args)
    except Exception as error:  # noqa: BLE001 — turned into a clear message below
        message = user_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_result(result, args)
    return 0


def user_error(error: BaseException) -> str | None:
    """The message of a bad-input error, also when Ray wrapped it in a task error."""
    from recsys_dist.data.events import BadEventError
    from recsys_dist.data.importers import DataFormatError
    from recsys_dist.data.prepare import AppendError

    expected = (BadEventError, DataFormatError, AppendError, ConfigError, FileNotFoundError)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)  # Ray task errors carry the original here
        if isinstance(inner, BaseException) and inner is not error:
            error = inner
            continue
        if isinstance(error, expected):
            return str(error)
        error = error.__cause__ or error.__context__
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-dist", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_import,
        _add_generate,
        _add_prepare,
        _add_train,
        _add_evaluate,
        _add_recommend,
        _add_score,
        _add_serve,
        _add_interests,
        _add_report,
    ):
        sub = add(commands)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--address", default=None, help="Ray address (default: local Ray)")
    return parser


def _add_import(commands):
    sub = commands.add_parser("import", help="convert a log to a canonical dataset directory")
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


def _add_generate(commands):
    sub = commands.add_parser("generate", help="a synthetic log whose interests drift")
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


def _add_prepare(commands):
    sub = commands.add_parser("prepare", help="events → split sequence dataset (Ray Data)")
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


def _add_train(commands):
    sub = commands.add_parser("train", help="train BERT4Rec with Ray Train + DeepSpeed")
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


def _add_evaluate(commands):
    sub = commands.add_parser("evaluate", help="HR/NDCG/MRR@5/10/20 of a trained run")
    sub.add_argument("--run", required=True)
    sub.add_argument("--split", default="test", choices=["valid", "test"])
    sub.add_argument("--data", help="prepared dataset (default: the one the run trained on)")
    sub.add_argument("--keep-seen", action="store_true", help="rank already-seen items too")
    sub.add_argument(
        "--sampled",
        type=int,
        default=0,
        metavar="N",
        help="rank against N sampled negatives instead of the full catalogue",
    )
    sub.add_argument("--sampling", default="uniform", choices=["uniform", "popularity"])
    sub.set_defaults(handler=_run_evaluate)
    return sub


def _add_recommend(commands):
    sub = commands.add_parser("recommend", help="top-K for histories given as events")
    sub.add_argument("--run", required=True)
    sub.add_argument("--histories", required=True, help="Parquet events: user_id,item_id,timestamp")
    sub.add_argument("--k", type=int, default=10)
    sub.add_argument("--output", required=True)
    sub.add_argument("--keep-seen", action="store_true")
    sub.set_defaults(handler=_run_recommend)
    return sub


def _add_score(commands):
    sub = commands.add_parser("score", help="top-K for every user of a prepared dataset")
    sub.add_argument("--run", required=True)
    sub.add_argument("--data", help="prepared dataset (default: the run's)")
    sub.add_argument("--k", type=int, default=10)
    sub.add_argument("--output", required=True, help="Parquet file: user_id, rank, item_id, score")
    sub.add_argument("--keep-seen", action="store_true")
    sub.set_defaults(handler=_run_score)
    return sub


def _add_serve(commands):
    sub = commands.add_parser(
        "serve", help="online recommendations over HTTP (Ray Serve), real-time interest updates"
    )
    sub.add_argument("--run", required=True, help="run directory (its model/ is served)")
    sub.add_argument("--model", help="another export to serve (default: RUN/model)")
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument("--host", default="127.0.0.1")
    _add_config_args(sub)
    sub.set_defaults(handler=_run_serve)
    return sub


def _add_config_args(sub) -> None:
    sub.add_argument("--config", help="YAML config (sections data/model/train/eval)")
    sub.add_argument("overrides", nargs="*", metavar="section.key=value")


def _config(args, base: Sequence[str] = (), **flags: Any):
    """``base`` settings, the YAML config, ``key=value`` overrides, explicit flags (which win)."""
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, [*base, *args.overrides, *extra])


def init_ray(address: str | None, min_cpus: int = 1) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Locally, Ray gets at least ``min_cpus`` logical CPUs so that Ray Data has room to stream
    while every training worker holds one. A local Ray inherits this process's environment,
    so its workers see the same AWS settings for ``s3://`` paths; on a cluster every node
    needs them (environment or an IAM role), see docs/architecture.md "Object storage".
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # The dashboard serves the State API that Ray Train uses to clean up after a failed run.
    ray.init(num_cpus=max(os.cpu_count() or 1, min_cpus))


def _run_import(args):
    from recsys_dist.data.importers import import_dataset

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
    from recsys_dist.data.synthetic import generate_dataset

    init_ray(args.address)
    return generate_dataset(
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
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.prepared import load_manifest

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
    from recsys_dist.train.trainer import train

    config = _config(
        args, **{"train.workers": args.workers, "train.use_gpu": True if args.gpu else None}
    )
    init_ray(args.address, min_cpus=int(config.train.workers * config.train.cpus_per_worker) + 2)
    return train(args.data, args.output, config, overwrite=args.overwrite)


def _run_evaluate(args):
    from recsys_dist.config import EvalConfig
    from recsys_dist.evaluation.evaluate import evaluate_run

    eval_config = EvalConfig(
        exclude_seen=not args.keep_seen, sampled_negatives=args.sampled, sampling=args.sampling
    )
    init_ray(args.address)
    return evaluate_run(args.run, args.split, eval_config, args.data)


def _run_recommend(args):
    from recsys_dist import storage
    from recsys_dist.checkpoint import MODEL_DIR
    from recsys_dist.inference.batch import recommend_histories

    init_ray(args.address)
    return recommend_histories(
        storage.join(args.run, MODEL_DIR),
        args.histories,
        args.output,
        args.k,
        exclude_seen=not args.keep_seen,
    )


def _run_score(args):
    from recsys_dist import storage
    from recsys_dist.checkpoint import MODEL_DIR
    from recsys_dist.evaluation.evaluate import prepared_dir_of
    from recsys_dist.inference.batch import score_prepared

    init_ray(args.address)
    data = args.data or prepared_dir_of(args.run)
    model = storage.join(args.run, MODEL_DIR)
    return score_prepared(model, data, args.output, args.k, exclude_seen=not args.keep_seen)


def _run_serve(args):
    from recsys_dist.serving.app import run_service, use_haproxy_ingress

    config = _config(args)
    use_haproxy_ingress()  # effective when init_ray starts a local Ray
    init_ray(args.address, min_cpus=2)
    url = run_service(
        args.run, config.serve, args.host, args.port, args.model, interests=config.interests
    )
    print(json.dumps({"url": url, "docs": f"{url}/docs"}) if args.json else f"serving on {url}")
    sys.stdout.flush()
    _wait_for_interrupt()
    return {"url": url, "stopped": True}


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


def _add_interests(commands):
    sub = commands.add_parser(
        "interests",
        help="interest trajectories, drift, change points and forecasts per user (Ray Data)",
    )
    sub.add_argument("--run", required=True)
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
    from recsys_dist import storage
    from recsys_dist.evaluation.evaluate import prepared_dir_of
    from recsys_dist.interests.evaluate import evaluate_interests
    from recsys_dist.interests.forecast import INTERESTS_FILE
    from recsys_dist.interests.offline import analyse_users

    if not args.output and not args.evaluate:
        raise SystemExit("interests: give --output DIR, --evaluate, or both")
    config = _config(args).interests
    init_ray(args.address)
    data = args.data or prepared_dir_of(args.run)
    result: dict[str, Any] = {}
    if args.evaluate or not storage.exists(storage.join(args.run, INTERESTS_FILE)):
        result["evaluation"] = evaluate_interests(args.run, data, config)
    if args.output:
        result["analysis"] = asdict(analyse_users(args.run, data, args.output, config, args.users))
    return result


def _add_report(commands):
    sub = commands.add_parser(
        "report", help="one self-contained HTML page: training, metrics, interest trajectories"
    )
    sub.add_argument("--run", required=True)
    sub.add_argument("--data", help="prepared dataset (default: the run's)")
    sub.add_argument("--output", required=True, help="the HTML file to write")
    sub.add_argument("--users", type=int, default=6, help="users drawn in detail")
    _add_config_args(sub)
    sub.set_defaults(handler=_run_report)
    return sub


def _run_report(args):
    from recsys_dist import storage
    from recsys_dist.report.collect import collect_report
    from recsys_dist.report.html import render_report

    config = _config(args)
    init_ray(args.address)
    data = collect_report(args.run, config, args.data, args.users)
    page = render_report(data)
    storage.write_text(args.output, page)
    return {"output": args.output, "bytes": len(page.encode()), "users": len(data.users)}


def _print_result(result: Any, args) -> None:
    payload = asdict(result) if is_dataclass(result) else result
    if args.json:
        print(json.dumps(payload, sort_keys=True, default=str))
    elif args.command == "evaluate":
        print(format_metrics_table(payload))
    else:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def format_metrics_table(result: dict[str, Any]) -> str:
    """HR/NDCG/MRR rows by K for the model and the popularity baseline, with the protocol."""
    ks = sorted({int(k.split("@")[1]) for k in result if "@" in k})
    header = f"{'':12}" + "".join(f"{f'{m}@{k}':>10}" for m in ("hr", "ndcg", "mrr") for k in ks)
    lines = [f"{result['split']} split, {result['users']} users, {result['protocol']}", header]
    for name, metrics in (("model", result), ("popularity", result["baseline_popularity"])):
        values = "".join(f"{metrics[f'{m}@{k}']:>10.4f}" for m in ("hr", "ndcg", "mrr") for k in ks)
        lines.append(f"{name:12}{values}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
