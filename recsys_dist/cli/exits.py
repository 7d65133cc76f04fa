"""How a command ends when it does not succeed: one line on stderr and an exit code.

    2    the user's: bad input (any :class:`~recsys_dist.errors.UserInputError`: an argument,
         a file, row or field, a config value, a malformed keys file), or a missing file
    1    the environment's: a path this user may not read or write (``PermissionError``), an
         object store or a Ray address that does not answer (``OSError``, ``ConnectionError``),
         or a run that failed for a reason outside its input (:class:`RunFailed`)
    130  interrupted (Ctrl-C); ``train`` says what its run keeps and how to resume it

The line names the thing and what to do about it; no traceback, unless ``-v``, which prints
the traceback first (for a bug report) and keeps the exit code. Anything else is a bug: it
is raised, traceback and all (conventions habit 15).
"""

from __future__ import annotations

import os
import re
import sys
import traceback

from recsys_dist.errors import RunFailed, UserInputError, causes

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_READER_GONE = 141  # 128 + SIGPIPE: what other commands exit with under `| head`


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def say(message: str, prefix: str = "error: ") -> None:
    print(f"{prefix}{one_line(message)}", file=sys.stderr)
    sys.stderr.flush()


def reader_gone() -> int:
    """stdout's reader has gone (``| head``): nothing more is printed, and no traceback as
    Python would at exit, flushing into the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_READER_GONE


def bad_input(message: str) -> int:
    say(message)
    return EXIT_BAD_INPUT


def user_error(error: BaseException) -> str | None:
    """The message of a user error, also when Ray wrapped it in a task error; None otherwise.

    User errors are :class:`UserInputError` and its subclasses, and a ``FileNotFoundError``
    for an input path that is not there (named in the message).
    """
    for cause in causes(error, implicit=True):
        if isinstance(cause, UserInputError):
            return str(cause)
        if isinstance(cause, FileNotFoundError):
            if cause.filename is not None:
                return f"{cause.filename}: {cause.strerror or 'no such file or directory'}"
            return str(cause)
    return None


def environment_error(error: BaseException) -> str | None:
    """The line for a failure of the environment, not of the input; None for anything else.

    Followed only through explicit causes (``raise ... from``, a Ray task's original): a bug
    raised while handling an ``OSError`` is still a bug.
    """
    for cause in causes(error):
        if isinstance(cause, RunFailed):
            return str(cause)
        if isinstance(cause, PermissionError):
            where = f"{cause.filename}: " if cause.filename else ""
            return (
                f"{where}{cause.strerror or cause}: this user may not read or write it; "
                "check its owner and mode, or choose another path"
            )
        if isinstance(cause, ConnectionError):  # Ray's address (cli.common.init_ray) says so
            return str(cause)
        if isinstance(cause, OSError):
            return _storage_failure(cause)
    return None


# How pyarrow's S3 errors name what failed: "... for key 'K' in bucket 'B': AWS Error ...".
_S3_OBJECT = re.compile(r"key '([^']*)' in bucket '([^']*)'")


def _storage_failure(error: OSError) -> str:
    text = error.strerror or str(error)
    found = _S3_OBJECT.search(text)
    if found or "AWS Error" in text:
        where = f"s3://{found[2]}/{found[1]}: " if found else ""
        hint = "the object store failed: check AWS_ENDPOINT_URL, the credentials and the network"
        return f"{where}{text} ({hint})"
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{text} (the file system failed)"


def handle(error: BaseException, verbose: bool, interrupted: str = "interrupted") -> int:
    """The exit code for ``error`` after its one line; raises it again when it is a bug."""
    if isinstance(error, KeyboardInterrupt):
        message, code, prefix = interrupted, EXIT_INTERRUPTED, ""
    elif (message := user_error(error)) is not None:
        code, prefix = EXIT_BAD_INPUT, "error: "
    elif (message := environment_error(error)) is not None:
        code, prefix = EXIT_FAILED, "error: "
    else:
        raise error
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    say(message, prefix)
    return code
