"""``config show``: the config a command given ``--config`` and these overrides would run
with, every default included (secrets redacted, as in a run's saved config)."""

from __future__ import annotations

import argparse
from typing import Any

from recsys_dist.cli import common
from recsys_dist.cli.command import Action, Command


def _run(args: argparse.Namespace):
    return common.config(args).public_dict()


def _summary(r: dict, args: Any, seconds: float) -> list[str]:
    import yaml

    return [yaml.safe_dump(r, sort_keys=False).rstrip()]


COMMANDS = (
    Command(
        "config",
        "the resolved config",
        _run,
        _summary,
        actions={
            "show": Action("print the config with every default, as YAML", common.add_config_args)
        },
    ),
)
