"""README.md as documentation that works: it starts with the two commands, every
```python block runs as written in a fresh interpreter, and shown output matches.

A block may be skipped only when the line just before it is
``<!-- not-run: REASON -->``; the reason is printed (and the test reported as
skipped with it), so a skipped block is never silent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")


def blocks(language):
    """(line number, code, skip reason or None) of every block in `language`."""
    found = []
    for match in FENCE.finditer(README):
        if match.group(1) != language:
            continue
        line = README.count("\n", 0, match.start()) + 1
        before = README[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        found.append((line, match.group(2), reason.group(1) if reason else None))
    return found


PYTHON_BLOCKS = blocks("python")


def test_readme_starts_with_the_two_commands():
    first_lines = README.split("\n")[:9]
    assert first_lines == [
        "# plugin-scheduling",
        "",
        "```bash",
        "pip install . && python -m plugin_scheduling demo",
        "```",
        "",
        "```bash",
        "pip install '.[test]' && bash tests/run_all.sh",
        "```",
    ], first_lines


def test_readme_has_python_snippets_and_few_are_skipped():
    assert len(PYTHON_BLOCKS) >= 6
    assert README.count("# -> ") >= 5  # outputs shown are checked (see check_printed_output)
    assert sum(1 for *_, reason in PYTHON_BLOCKS if reason) <= 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("line", "code", "reason"), PYTHON_BLOCKS, ids=[f"README.md:{b[0]}" for b in PYTHON_BLOCKS])
def test_readme_python_block_runs_as_written(line, code, reason, tmp_path):
    if reason:
        print(f"README.md:{line} not run: {reason}")
        pytest.skip(f"README.md:{line} marked not-run: {reason}")
    assert not re.search(r"^await |^async with ", code, re.M), "top-level await only runs in a notebook"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),  # anything a snippet writes under ~ or ./ stays in the tmp dir
        "CJM_DATA_DIR": str(tmp_path / "cjm_data"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.pop("PLUGIN_SCHEDULING_NVML_LIBRARY", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150
    )
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stdout}\n{result.stderr}"
    check_printed_output(line, code, result.stdout)


def check_printed_output(line, code, stdout):
    """``print(...)  # -> OUTPUT`` promises that this print writes exactly OUTPUT;
    other comments are prose. The promised lines must appear in order."""
    promised = [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s*# -> (.+?)\s*$", code, re.M)]
    printed = stdout.splitlines()
    position = 0
    for promise in promised:
        assert promise in printed[position:], f"README.md:{line}: README says {promise!r}, printed {printed!r}"
        position = printed.index(promise, position) + 1


def test_the_reservation_scenario_output_matches_the_example():
    [(_, shown, _)] = [b for b in blocks("") if "ReservationScheduler admits:" in b[1]]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reservations.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    for expected in shown.strip().splitlines():
        label, names = expected.split(":", 1)
        [actual] = [p for p in printed if p.startswith(label + ":")]
        # Which plugin wins the race varies (the README says so); the spacing and how many are admitted do not.
        assert actual.split("[")[0] == expected.split("[")[0], (actual, expected)
        assert len(eval(actual.split(":", 1)[1])) == len(eval(names)), (actual, expected)  # noqa: S307 - our own output
