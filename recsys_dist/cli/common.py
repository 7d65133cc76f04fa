"""What several sub-commands share: one definition of each shared flag, the model source
(``--run`` or ``--registry``), the config (``--config`` and ``section.key=value``), path
checks made before Ray starts, and starting Ray.

A flag offered by several commands is defined once in :data:`FLAGS` and added with
:func:`add`, so it reads the same (help, type, choices, default) wherever it appears
(tests/test_cli_help.py checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

from recsys_dist import console, storage
from recsys_dist.config import Config, load_config, presets
from recsys_dist.errors import MissingInputError, UserInputError

RAY_ADDRESS_TIMEOUT_S = 5.0  # a cluster that does not take a connection in this long is down


def at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, refused by argparse (exit 2) otherwise."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    integer.__name__ = f"integer >= {low}"
    return integer


POSITIVE = at_least(1)
NON_NEGATIVE = at_least(0)


def default_from_config(key: str) -> str:
    """A flag's default where a setting gives it: ``key`` of the settings the command runs
    with (--config, overrides, saved ones), and its built-in value (``train.workers``: 2)."""
    section, name = key.split(".")
    return f"(default: {key} of the settings; {getattr(getattr(Config(), section), name)} built in)"


# Every flag that more than one sub-command offers: its one definition.
FLAGS: dict[str, dict[str, Any]] = {
    "--run": {"help": "a trained run directory (local or s3://)"},
    "--registry": {"help": "a model registry: a directory or s3:// prefix"},
    "--model-version": {
        "metavar": "VERSION",
        "help": "with --registry: this version (default: the registry's current one)",
    },
    "--model": {
        "metavar": "DIR",
        "help": "with --run: another export of its model, e.g. its int8 one from "
        "`recsys-dist export` (default: RUN/model)",
    },
    "--data": {"help": "a prepared dataset (default: the one the run trained on)"},
    "--config": {
        "help": "a YAML config (sections data/model/train/eval/serve/interests/retrain), or a "
        f"preset for a kind of data: {', '.join(presets())} (default: none, the built-in "
        "defaults; see `recsys-dist config show`)",
    },
    "--k": {"type": POSITIVE, "default": 10, "help": "recommendations per user"},
    "--keep-seen": {
        "action": "store_true",
        "help": "rank items the user has already seen too (eval.exclude_seen=false)",
    },
    "--workers": {
        "type": POSITIVE,
        "help": "training workers, each a Ray Train worker " + default_from_config("train.workers"),
    },
    "--gpu": {"action": "store_true", "help": "one GPU per worker, NCCL, bf16 (train.use_gpu)"},
    "--overwrite": {
        "action": "store_true",
        "help": "replace what --output holds (without it, an --output holding results is "
        "refused; `train` resumes the run there instead)",
    },
    "--file": {"help": "the keys file (local or s3://)"},
}
OVERRIDES_HELP = "settings applied after --config and the saved ones, e.g. train.lr=0.002"


def add(parser: argparse.ArgumentParser, flag: str, **required: bool) -> argparse.Action:
    """``flag`` as :data:`FLAGS` defines it; only whether it is required may differ."""
    return parser.add_argument(flag, **FLAGS[flag], **required)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    add(parser, "--config")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=OVERRIDES_HELP)


def add_model_source(
    parser: argparse.ArgumentParser, pick_version: bool = True, other_export: bool = True
) -> None:
    """``--run RUN [--model DIR]``, or ``--registry R [--model-version V]``.

    ``--model`` reads another export of the run's model in place of ``RUN/model`` (its int8
    export); the run still gives the settings and the data. ``pick_version=False`` where
    the command follows the current version (``serve``); ``other_export=False`` where only
    the run's own export makes sense (``export`` itself).
    """
    source = parser.add_mutually_exclusive_group(required=True)
    add(source, "--run")
    add(source, "--registry")
    if pick_version:
        add(parser, "--model-version")
    if other_export:
        add(parser, "--model")
    parser.set_defaults(model_source=True, model_version=None, model=None)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


def resolve_model_source(args: argparse.Namespace) -> None:
    """Point ``args.run`` at the registry version asked for: a version directory is laid out
    as a run (its record, config, model and calibration), read-only."""
    if not getattr(args, "model_source", False):
        return
    if args.registry is None:
        require(args.model_version is None, "--model-version needs --registry")
        return
    require(args.model is None, "--model goes with --run, not --registry")
    from recsys_dist.registry import Registry

    registry = Registry(args.registry)
    version = registry.get(args.model_version) if args.model_version else registry.current()
    if version is None:
        raise MissingInputError(
            f"--registry {args.registry}: no current version (recsys-dist models promote)"
        )
    args.run = version.path


def model_dir(args: argparse.Namespace) -> str:
    """The export a command reads: ``--model`` where given (checked), else the run's own."""
    from recsys_dist import run_layout

    if args.model is None:
        return run_layout.model_dir(args.run)
    check_model(args.model, f"--model {args.model}")
    return args.model


def check_run(run: str) -> None:
    """``--run`` holds a trained run: its record and its exported model."""
    from recsys_dist import run_layout

    run_layout.run_record(run)  # raises for a directory that is not a run
    check_model(run_layout.model_dir(run), f"--run {run}")


def check_model(model: str, flag: str) -> None:
    from recsys_dist.checkpoint import STATE_FILE

    if not storage.exists(storage.join(model, STATE_FILE)):
        raise MissingInputError(f"{flag}: no exported model in {model} (no {STATE_FILE})")


def check_prepared(data: str | None) -> None:
    """``--data``, when given, is a prepared dataset (``recsys-dist prepare``'s output)."""
    from recsys_dist.data.prepared import load_manifest

    if data is not None:
        load_manifest(data)


def run_inputs(args: argparse.Namespace) -> str:
    """Check the run (its record and export), ``--model`` and ``--data`` before Ray starts;
    returns the export to read."""
    check_run(args.run)
    model = model_dir(args)
    check_prepared(getattr(args, "data", None))
    return model


def run_config(args: argparse.Namespace, sections: Sequence[str], **flags: Any) -> Config:
    """The run's own settings of ``sections``, then ``--config``, the overrides, and the
    flags: ``--keep-seen`` and ``flags`` (setting -> value, None where not given)."""
    keep_seen = {"eval.exclude_seen": False if getattr(args, "keep_seen", False) else None}
    return config(args, saved_settings(args, sections), **keep_seen, **flags)


def config_path(name: str | None) -> str | None:
    """``--config`` as a path: a preset's name becomes its file."""
    from recsys_dist.config import PRESETS_DIR

    return str(PRESETS_DIR / f"{name}.yaml") if name in presets() else name


def config(args: argparse.Namespace, base: Sequence[str] = (), **flags: Any) -> Config:
    """``base`` settings, the YAML config, ``key=value`` overrides, explicit flags (which win)."""
    return load_config(config_path(args.config), [*base, *args.overrides, *flag_overrides(flags)])


def saved_settings(args: argparse.Namespace, sections: Sequence[str]) -> list[str]:
    """The run's own settings of ``sections``, but for the keys ``--config`` sets."""
    from recsys_dist import run_layout

    return run_layout.saved_settings(args.run, sections, config_path(args.config))


def flag_overrides(flags: dict[str, Any]) -> list[str]:
    """``key=value`` for each flag that was given (not None)."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def file_overrides(path: str | None) -> list[str]:
    """A YAML config as ``section.key=value`` overrides, for a command whose settings start
    from saved ones (``retrain``: the parent version's) that the file must go over."""
    import yaml

    from recsys_dist.config import ConfigError

    if path is None:
        return []
    path = config_path(path)
    loaded = yaml.safe_load(storage.read_text(path)) or {}
    sections = loaded.values() if isinstance(loaded, dict) else [loaded]
    if not all(isinstance(values, dict | None) for values in sections):
        raise ConfigError(f"{path}: expected sections of settings (section: {{key: value}})")
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in loaded.items()
        for key, value in (values or {}).items()
    ]


def init_ray(address: str | None, min_cpus: int = 1) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    An address that takes no connection within :data:`RAY_ADDRESS_TIMEOUT_S` is a
    ``ConnectionError`` naming it (exit 1), not Ray's minutes of retries. Locally, Ray gets
    at least ``min_cpus`` logical CPUs so that Ray Data has room to stream while every
    training worker holds one. A local Ray inherits this process's environment, so its
    workers see the same AWS settings for ``s3://`` paths; on a cluster every node needs
    them (environment or an IAM role), see docs/architecture.md "Object storage". Unless
    ``-v``, Ray logs only errors and its workers run :func:`console.quiet_worker`.
    """
    import ray

    if ray.is_initialized():
        return
    flag = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    options = console.ray_init_options()
    if address:
        check_reachable(address, flag)
        try:
            ray.init(address=address, log_to_driver=True, **options)
        except ConnectionError as error:
            raise ConnectionError(f"{flag} {address}: {error}") from error
    else:
        num_cpus = max(os.cpu_count() or 1, min_cpus)
        console.local_ray_environment(num_cpus)
        # The dashboard serves the State API that Ray Train uses to clean up after a failed run.
        ray.init(num_cpus=num_cpus, **options)
    console.quiet_ray_data()


def check_reachable(address: str, flag: str, timeout_s: float = RAY_ADDRESS_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` naming ``flag`` when nothing takes a connection at
    ``address`` (``HOST:PORT``, ``ray://HOST:PORT``); other forms (``auto``) go to Ray."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"{flag} {address}: no Ray cluster answers there ({error.strerror or error}); "
            "start it (ray start --head) or give the address of a running one"
        ) from None
