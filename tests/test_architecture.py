"""The direction of the code is checked by import-linter (contracts in pyproject.toml), not by memory:
record -> tracefile <- rules <- report, torch only under record, no cycles between folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the dev extra has it)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("lrdebug/report/renderers/sneaky.py", "import torch\n", "Only record imports torch"),
    ("lrdebug/rules/sneaky.py", "from lrdebug.record import recorder\n", "Layers"),
    ("lrdebug/tracefile/sneaky.py", "from lrdebug.report import model\n", "Layers"),
    ("lrdebug/record/sneaky.py", "import rich.console\n", "The recorder never imports rich"),
])
def test_a_wrong_import_breaks_the_build(tmp_path, module, line, contract):
    copy = tmp_path / "tree"
    copy.mkdir()
    shutil.copytree(ROOT / "lrdebug", copy / "lrdebug", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / module).write_text(line)
    result = _lint(copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
