"""``keys``: API keys for the service (create, list, revoke); secrets are stored hashed."""

from __future__ import annotations

import argparse
from typing import Any

from recsys_dist.cli import common
from recsys_dist.cli.command import Action, Command


def _file_argument(sub: argparse.ArgumentParser) -> None:
    common.add(sub, "--file", required=True)


def _create_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--name", required=True, help="the key's name, unique among live keys")
    sub.add_argument(
        "--scopes", required=True, help="comma-separated: recommend, events:write, users:read"
    )


def _revoke_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", help="the key's name (see `recsys-dist keys list`)")


KEY_ACTIONS = {
    "create": Action(
        "add a key; its secret is printed once and stored only as a SHA-256", _create_arguments
    ),
    "list": Action("every key: name, scopes, created, revoked (never a secret)"),
    "revoke": Action(
        "revoke a key by name (the service stops taking it within a reload)", _revoke_arguments
    ),
}


def _run(args: argparse.Namespace):
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


def _summary(r: dict, args: Any, seconds: float) -> list[str]:
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


COMMANDS = (
    Command(
        "keys",
        "API keys for the service: create, list, revoke",
        _run,
        _summary,
        _file_argument,
        actions=KEY_ACTIONS,
    ),
)
