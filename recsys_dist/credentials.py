"""Settings that carry credentials: how they are written (redacted) and read (at use).

Convention: a secret is written nowhere. :meth:`recsys_dist.config.Config.public_dict`
redacts every setting named in :data:`SECRET_SETTINGS` wherever the config is serialised
(``config.yaml``, hence registry versions and MLflow params; logs; ``config show``), and the
code that needs the secret resolves it at the moment of use with :func:`resolve_secret`,
which also reads it from the environment (``env:NAME``) or a mounted file (``file:/path``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from recsys_dist.errors import UserInputError


class SecretError(UserInputError):
    """A secret setting that cannot be resolved."""


# Settings that may carry a credential: redacted wherever the config is written, and read at
# the moment of use through resolve_secret (which also takes env:NAME and file:/path).
SECRET_SETTINGS = ("serve.redis_url",)
REDACTED = "***"  # what a password becomes in a written config
_SECRET_SOURCES = ("env:", "file:")


def redact(value: str) -> str:
    """``value`` with its password (``user:PASSWORD@``, ``?password=``) replaced by ``***``;
    scheme, user, host, port and path stay so a reader still sees where it points. An
    ``env:``/``file:`` reference holds no secret and is kept; a value that is no URL is a
    secret whole."""
    if value.startswith(_SECRET_SOURCES):
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        return REDACTED if value else value
    # Up to the last "@": a password with an unescaped "/", "?" or "#" is still cut whole.
    userinfo, at, rest = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    credentials = f"{user}:{REDACTED}@" if colon else userinfo + at
    rest = re.sub(r"(?i)([?&]password=)[^&#]*", rf"\1{REDACTED}", rest)
    return f"{scheme}://{credentials}{rest}"


def resolve_secret(value: str, key: str) -> str:
    """The secret setting ``key`` holding ``value``, resolved at the moment of use:
    ``env:NAME`` is environment variable NAME, ``file:/path`` that file's content, stripped
    (a mounted Kubernetes Secret), anything else the value itself.

    Why at use, not at load: the config a run saves and a Serve YAML holds then carries the
    reference, never the secret. A value redacted by :func:`redact` (a run's saved config read
    back) is refused rather than sent to a server as if it were the password.
    """
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        secret = os.environ.get(name, "")
        if not secret:
            raise SecretError(f"{key}={value}: environment variable {name!r} is not set or empty")
        return secret
    if value.startswith("file:"):
        path = value.removeprefix("file:")
        try:
            secret = Path(path).read_text().strip()
        except OSError as error:
            raise SecretError(f"{key}={value}: cannot read {path}: {error.strerror}") from None
        if not secret:
            raise SecretError(f"{key}={value}: {path} is empty")
        return secret
    if REDACTED in value:
        raise SecretError(
            f"{key}={value}: the saved config holds a redacted secret; pass the real one, "
            f"e.g. {key}=env:{key.rpartition('.')[2].upper()}"
        )
    return value
