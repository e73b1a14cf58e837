"""The import-linter contracts (pyproject.toml [tool.importlinter]) hold, and they can fail.

A copy of the packages is linted with the repository's config: as is it passes; with one
``import flows`` added to a trainer module, ``lint-imports`` exits non-zero and names that import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "tasks", "flows", "models")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} missing: pip install -c constraints.txt -e '.[test]'")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "data"))
    return tmp_path


def test_pristine_packages_keep_the_contracts(copy: Path) -> None:
    proc = _lint(copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _broken_by(copy: Path, module: str, line: str) -> str:
    """lint-imports' output once ``line`` is appended to ``module`` in the copy; it must fail."""
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402,F401\n")
    proc = _lint(copy)
    assert proc.returncode != 0, proc.stdout
    return proc.stdout + proc.stderr


def test_trainer_importing_flows_breaks_the_contracts(copy: Path) -> None:
    out = _broken_by(copy, "trainer/seed.py", "import flows")
    assert "BROKEN" in out
    assert "trainer.seed -> flows" in out, out


def test_a_circle_between_sibling_modules_breaks_the_contracts(copy: Path) -> None:
    """flows/sweep.py once imported flows/cli.py, which imports it: no ignore line hides that."""
    out = _broken_by(copy, "flows/sweep.py", "import flows.cli")
    assert "no import circles between the modules of a package BROKEN" in out, out
    assert ".sweep -> .cli" in out, out
