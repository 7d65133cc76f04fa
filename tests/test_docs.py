"""Docs whose every command runs: each `recsys-dist` command in README.md, docs/*.md and
cluster/README.md names a sub-command and flags the real parser has, and every file path the
docs name is in the repository.

Commands are read from fenced code blocks and inline code; their arguments may be the docs'
shorthand (``RUN``, ``[--keep-seen]``, ``list|show V``), so a command is checked for what a
reader will type first: the sub-command (and action) and each ``--flag``, against the parser
itself (``recsys_dist.cli.build_parser``), not a copy of it.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from recsys_dist.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "cluster" / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
# A repository path as the docs write one: a known top folder, or a package module
# (serving/app.py, relative to recsys_dist/), ending in a file the repo keeps.
PATH = re.compile(
    r"(?<![\w./-])((?:recsys_dist|tests|bench|jobs|cluster|serve|docs|\.ci)/[\w./-]*"
    r"|[\w-]+/[\w/-]*\.(?:py|yaml|yml|md|toml|sh|json)(?!\w))"
)
SEARCHED = ("", "recsys_dist", "tests")  # where a path the docs name may be relative to
# Layout names the docs use for the user's own folders (RUN/..., DIR/...), not repo files.
NOT_REPO = re.compile(r"^(?:[A-Z_]+/|[a-z]+://|~|\.\./)|/[A-Z_]+(?:/|$)|\*|\{")


def doc_texts() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), path.read_text()) for path in DOCS]


# Where a command starts in a shell line: its start (after a prompt), or after what runs it.
INVOKED = re.compile(r"(?:^\s*(?:\$\s*)?|&&\s*|;\s*|\s--\s+|\./dev run\s+)recsys-dist\s+")
DRAWING = re.compile("[\u2500-\u257f\u25b2-\u25c0]")  # box drawing and arrows: a diagram


def commands(text: str) -> list[str]:
    """Every `recsys-dist ...` command in fenced blocks (backslash continuations joined;
    diagrams left out) and every inline code span that is one."""
    lines = [
        line
        for block in FENCE.findall(text)
        for line in re.sub(r"\\\n\s*", " ", block).splitlines()
        if not DRAWING.search(line)
    ]
    lines += [span for span in INLINE.findall(text) if span.startswith("recsys-dist ")]
    return [command for line in lines for command in _invocations(line)]


def _invocations(line: str) -> list[str]:
    """The `recsys-dist` commands a shell line runs (it may chain them with && or ;)."""
    line = line.split(" #")[0]
    starts = [match.end() for match in INVOKED.finditer(line)]
    return ["recsys-dist " + re.split(r"&&|;", line[start:])[0].strip() for start in starts]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser, and ``command action`` for action groups."""
    top = build_parser()
    found = {"": top}
    for name, sub in _subparsers(top).items():
        found[name] = sub
        for action, deeper in _subparsers(sub).items():
            found[f"{name} {action}"] = deeper
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public view of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def check_command(command: str, known: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What in ``command`` the parser does not have (empty when all of it is there)."""
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    names = [w for w in words if not w.startswith("-")]
    if not names:
        return []
    name = names[0]
    if name not in known:
        return [f"no sub-command {name!r}"]
    actions = [a.split("|")[0] for a in names[1:2]]
    if actions and f"{name} {actions[0]}" in known:
        name = f"{name} {actions[0]}"
    allowed = options(known[name]) | options(known[""])
    return [f"{name}: no flag {flag}" for flag in FLAG.findall(command) if flag not in allowed]


def repo_paths(text: str) -> set[str]:
    """Repository paths the text names in inline code, code blocks and links."""
    spans = INLINE.findall(text) + FENCE.findall(text) + re.findall(r"\]\(([^)#]+)", text)
    paths = set()
    for span in spans:
        for path in PATH.findall(span):
            path = path.rstrip(".,:;)")
            if not NOT_REPO.search(path) and "." in Path(path).name or path.endswith("/"):
                paths.add(path)
    return paths


def exists(path: str, doc: str) -> bool:
    beside = (ROOT / doc).parent / path  # a link relative to its document
    return beside.exists() or any((ROOT / base / path).exists() for base in SEARCHED)


@pytest.mark.parametrize(("doc", "text"), doc_texts(), ids=[d for d, _ in doc_texts()])
def test_every_command_in_the_docs_has_its_sub_command_and_flags(doc, text):
    known = parsers()
    found = commands(text)
    wrong = {c: problems for c in found if (problems := check_command(c, known))}
    assert not wrong, wrong


@pytest.mark.parametrize(("doc", "text"), doc_texts(), ids=[d for d, _ in doc_texts()])
def test_every_path_the_docs_name_is_in_the_repository(doc, text):
    missing = sorted(p for p in repo_paths(text) if not exists(p, doc))
    assert not missing, missing


def test_the_checks_catch_a_wrong_command_and_a_missing_path():
    known = parsers()
    assert check_command("recsys-dist train --data D --output R --worker 2", known)
    assert check_command("recsys-dist trian --data D", known)
    assert not check_command("recsys-dist models list --registry R --json", known)
    assert repo_paths("see `recsys_dist/serving/no_such.py`") == {"recsys_dist/serving/no_such.py"}
    assert not exists("recsys_dist/serving/no_such.py", "README.md")
    assert exists("serving/app.py", "docs/architecture.md")
    assert len(commands(Path(ROOT / "README.md").read_text())) > 20
