"""`pip install .` installs the whole package: every sub-package and the `recsys-dist` command
end up in the wheel pip builds (setuptools' package discovery is easy to get wrong)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_package_and_the_command(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("recsys_dist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        str(init.parent.relative_to(REPO))
        for init in (REPO / "recsys_dist").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert {f"{package}/__init__.py" for package in packages} <= names
    modules = {str(p.relative_to(REPO)) for p in (REPO / "recsys_dist").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    presets = {str(p.relative_to(REPO)) for p in (REPO / "recsys_dist" / "presets").glob("*.yaml")}
    assert presets and presets <= names, sorted(presets - names)  # --config NAME needs them
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "recsys-dist = recsys_dist.cli:main" in scripts
