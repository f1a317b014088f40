"""The dependency rules `make lint` enforces are real: a domain importing upward breaks the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "upward", "contract"),
    [
        ("users/repository.py", "from service.auth import grants", "Layers"),  # users below auth
        ("teams/service.py", "from service.auth import clients", "never meet"),  # teams beside auth
        ("db.py", "from service import users", "Layers"),  # the platform knows no domain
        ("users/service.py", "from service import openapi", "Domain logic"),  # rules know no web layer
    ],
)
def test_an_upward_import_fails_the_lint(tree: Path, module: str, upward: str, contract: str) -> None:
    assert lint(tree).returncode == 0
    path = tree / "service" / module
    path.write_text(
        path.read_text().replace(
            "from __future__ import annotations\n", f"from __future__ import annotations\n{upward}  # noqa\n", 1
        )
    )
    result = lint(tree)
    assert result.returncode != 0
    assert contract in result.stdout, result.stdout
    assert "BROKEN" in result.stdout, result.stdout
