"""The public API is typed for users' type checkers: ``pyright --verifytypes``
scores the package at least 98 % (symbols exported with a known type). pyright
is in the test extra (``pyright[nodejs]``); without it this fails, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_pyright_verifytypes_scores_at_least_98_percent() -> None:
    pyright = shutil.which("pyright")
    assert pyright, "pyright is not installed: pip install 'pyright[nodejs]' (in the test extra)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [pyright, "--verifytypes", "plugin_scheduling", "--ignoreexternal", "--outputjson"],
        cwd=ROOT, capture_output=True, text=True, timeout=280, env=env,
    )
    report = json.loads(result.stdout)
    score = report["typeCompleteness"]["completenessScore"]
    missing = [
        d["message"].splitlines()[0] + f" ({d.get('file', '?')})"
        for s in report["typeCompleteness"]["symbols"] if not s["isTypeKnown"]
        for d in s.get("diagnostics", [])
    ]
    assert score >= 0.98, f"type completeness {score:.1%} < 98%:\n" + "\n".join(missing[:20])
