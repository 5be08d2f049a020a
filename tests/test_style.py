"""ruff's lint and format checks, so that the test command (and CI) enforces the project's style."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PATHS = ("hf_seqobj", "tests", "scripts")
RUFF = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
"""ruff on the PATH, or beside this Python (a virtual environment that is not activated)."""


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (bash scripts/install.sh test installs it)")
@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(check):
    result = subprocess.run([RUFF, *check, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff {' '.join(check)} {' '.join(PATHS)} failed:\n{result.stdout}{result.stderr}"
