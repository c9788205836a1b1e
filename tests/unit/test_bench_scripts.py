"""The bench scripts run as the README runs them: `python bench/<name>.py` from the repository
root. Running a script puts its own folder first on sys.path, so a script named like one of the
repository's packages (bench/agent.py once) hides that package from every import, the script's
own included, and the script dies with "'agent' is not a package". Each script answers
`--help` (without a GPU), no script is named like a package or a module it could hide, and
every `bench/...py` the Makefile and the docs name exists."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix() for p in BENCH.rglob("*.py") if p.name != "__init__.py"
)


def repository_packages() -> set[str]:
    """The repository's top-level import names: its packages and modules at the root."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    return packages | {p.stem for p in ROOT.glob("*.py")}


def test_scripts_found() -> None:
    assert "bench/placement.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_answers_help(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # --help needs no GPU, even where there is one
    done = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout


def test_no_script_is_named_like_a_package_of_the_repository() -> None:
    packages = repository_packages()
    assert {"agent", "deviceplugin", "scorer", "native", "gpulet", "tests"} <= packages
    clashes = [s for s in SCRIPTS if Path(s).stem in packages]
    assert clashes == [], f"these would hide the package of the same name: {clashes}"


def test_no_script_is_named_like_a_module_it_could_hide() -> None:
    """The script's folder comes before the standard library and site-packages too."""
    hidden = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    clashes = [s for s in SCRIPTS if Path(s).stem in hidden]
    assert clashes == [], f"these would hide a module of the same name: {clashes}"


@pytest.mark.parametrize(
    "document", ["Makefile", "README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_named_scripts_exist(document: str) -> None:
    path = ROOT / document if document in ("Makefile", "README.md") else ROOT / "docs" / document
    named = set(re.findall(r"\bbench/[\w/]+\.py\b", path.read_text()))
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert missing == [], f"{document} names bench scripts that do not exist: {missing}"
