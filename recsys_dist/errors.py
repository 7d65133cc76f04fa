"""The exception family for bad input from the user (conventions habit 15).

A leaf module like :mod:`recsys_dist.schema`: it imports nothing from the package, so every
stage may raise these without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator


class UserInputError(ValueError):
    """Bad input from the user: a file, row, field, argument or config value.

    The message names the bad thing (``FILE row N: field 'F': ...``, ``--k must be >= 1``).
    The CLI catches this family once, prints the message as one line, and exits 2 without a
    traceback; any other exception is a bug and keeps its traceback. pip's
    ``DiagnosticPipError`` and click's ``UsageError`` draw the same line. A ``ValueError``
    subclass, so callers that caught ``ValueError`` before still do.
    """


def find_user_error(error: BaseException | None) -> UserInputError | None:
    """The :class:`UserInputError` that ``error`` is or carries, else None.

    Followed: the original a Ray task error wraps (its ``cause``; the wrapper may itself
    pass for the original's type, with a traceback in its message), and the exception an
    error was raised ``from``. Not the one being handled when an unrelated error came up
    (``__context__``): that is a failure of its own, and a retry may get past it.
    """
    return next((e for e in causes(error) if isinstance(e, UserInputError)), None)


def causes(error: BaseException | None, implicit: bool = False) -> Iterator[BaseException]:
    """``error``, then what it carries: the original a Ray task error wraps (its ``cause``,
    in place of the wrapper), the exception it was raised ``from``, and (``implicit``) the
    one being handled when it came up."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)
        if isinstance(inner, BaseException) and inner is not error:
            error = inner
            continue
        yield error
        error = error.__cause__ or (error.__context__ if implicit else None)


class RunFailed(RuntimeError):
    """A job that failed for a reason outside its input: workers lost more often than the
    run may recover from, say. The CLI prints the message as one line (what happened, what
    was kept, how to go on) and exits 1; the cause is logged with ``-v``."""


class MissingInputError(UserInputError, FileNotFoundError):
    """An input path that does not exist, or lacks what it should hold (a run's ``run.json``,
    a prepared dataset's manifest). Also a ``FileNotFoundError`` for existing callers."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output that already holds results the command would mix with or replace, without
    ``--overwrite``. Also a ``FileExistsError`` for existing callers."""
