"""Data flows one way: a module imports only earlier stages (parsed with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_dist"

# Leaves anyone may import (they import only each other), then the stages in data-flow order.
LEAVES = {
    *("schema", "config", "bounds", "credentials", "storage", "errors", "run_layout", "tracking"),
}
STAGE = {
    "data": 1,
    "model": 2,
    "checkpoint": 3,
    "evaluation": 4,
    "train": 5,
    "inference": 5,
    "interests": 6,
    "registry": 6,  # trained runs -> versions; serving and retraining read it
    "retrain": 7,  # one turn of the loop: data, training, evaluation, registry
    "serving": 7,
    "report": 8,
    "console": 8,  # the CLI's terminal output: logging, quiet frameworks, printing
    "cli": 9,
}
FORBIDDEN = {
    "model": {"ray", "deepspeed"},
    "data": {"deepspeed", "torch"},
    "inference": {"deepspeed"},
    "evaluation": {"deepspeed"},
    "interests": {"deepspeed"},
    "serving": {"deepspeed"},
    "registry": {"deepspeed", "ray", "torch"},
    "report": {"deepspeed", "ray", "torch"},
}


def stage_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def package_modules():
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"]
        if parts:
            yield parts[0], path


def test_no_backward_edges():
    problems = []
    for stage, path in package_modules():
        if stage in LEAVES:
            continue
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in FORBIDDEN.get(stage, ()):
                problems.append(f"{path.name}: {stage} must not import {top}")
            if top != "recsys_dist" or name == "recsys_dist":
                continue
            target = name.split(".")[1]
            if target in LEAVES or target == stage:
                continue
            if STAGE[target] >= STAGE[stage]:
                problems.append(f"{path.relative_to(PACKAGE)} ({stage}) imports {name}")
    assert not problems, "\n".join(problems)


def test_leaves_import_only_leaves():
    problems = []
    for stage, path in package_modules():
        if stage not in LEAVES:
            continue
        for name in imports_of(path):
            if name.startswith("recsys_dist.") and name.split(".")[1] not in LEAVES:
                problems.append(f"{path.name} (a leaf) imports {name}")
    assert not problems, "\n".join(problems)


def test_every_stage_is_classified():
    stages = {stage for stage, _ in package_modules()} - LEAVES - {"__init__"}
    assert stages <= set(STAGE), stages - set(STAGE)
