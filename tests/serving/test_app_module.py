"""Serve serializes the replica class where it is decorated, with the module's globals as
they are at that line: a helper defined below the class is a NameError in every replica
(a deploy failure the fast tier would not see otherwise)."""

from __future__ import annotations

import ast
from pathlib import Path

from recsys_dist.serving import deployment


def test_everything_the_replica_class_uses_is_defined_before_it():
    tree = ast.parse(Path(deployment.__file__).read_text())
    defined: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined[node.name] = node.lineno
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update({t.id: node.lineno for t in targets if isinstance(t, ast.Name)})
    (service,) = (n for n in tree.body if getattr(n, "name", "") == "RecommenderService")
    used = {n.id for n in ast.walk(service) if isinstance(n, ast.Name)}
    late = sorted(name for name in used if defined.get(name, 0) > service.lineno)
    assert not late, f"defined after RecommenderService, so missing in replicas: {late}"
