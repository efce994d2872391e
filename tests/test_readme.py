"""README.md and docs/**/*.md as documentation that works: README starts with the
title, a one-line description and the two commands; every ```python block of
README and of every docs page runs as written in a fresh interpreter, and shown
output matches; the docs site builds with ``mkdocs build --strict``.

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
#: Every page of documentation whose snippets run: README and docs/**/*.md.
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")


def blocks(language, page="README.md"):
    """(line number, code, skip reason or None) of every block of `page` in `language`."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) != language:
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        found.append((line, match.group(2), reason.group(1) if reason else None))
    return found


PYTHON_BLOCKS = [(f"{page}:{line}", code, reason) for page in PAGES for line, code, reason in blocks("python", page)]


def test_readme_starts_with_a_description_and_the_two_commands():
    first_lines = README.split("\n")[:11]
    assert first_lines[:2] == ["# plugin-scheduling", ""], first_lines
    description = first_lines[2]
    assert description and not description.startswith(("#", "`", "[", "<")) and first_lines[3] == "", first_lines
    assert first_lines[4:] == [
        "```bash",
        "pip install . && python -m plugin_scheduling demo",
        "```",
        "",
        "```bash",
        "pip install '.[test]' && bash tests/run_all.sh",
        "```",
    ], first_lines


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == "pip install '.[test]' && bash tests/run_all.sh", ci[-1]


def test_readme_is_short_and_speaks_of_systems_not_specs():
    assert len(README.splitlines()) <= 150
    assert "## Differences from cjm-plugin-system" in README  # a promise of the design
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert not re.search(r"\bseeds? ?0\d\d|the seed's|seed 00", text, re.I), page


def test_the_docs_have_python_snippets_and_few_are_skipped():
    assert len(PYTHON_BLOCKS) >= 15
    assert sum(code.count("# -> ") for _, code, _ in PYTHON_BLOCKS) >= 10  # checked by check_printed_output
    assert sum(1 for *_, reason in PYTHON_BLOCKS if reason) <= 2
    assert [b for b in PYTHON_BLOCKS if b[0].startswith("README.md:")], "README shows no runnable example"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("line", "code", "reason"), PYTHON_BLOCKS, ids=[b[0] for b in PYTHON_BLOCKS])
def test_python_block_runs_as_written(line, code, reason, tmp_path):
    if reason:
        print(f"{line} not run: {reason}")
        pytest.skip(f"{line} marked not-run: {reason}")
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
    assert result.returncode == 0, f"{line} failed:\n{result.stdout}\n{result.stderr}"
    check_printed_output(line, code, result.stdout)


def check_printed_output(line, code, stdout):
    """``print(...)  # -> OUTPUT`` promises that this print writes exactly OUTPUT;
    other comments are prose. The promised lines must appear in order."""
    promised = [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s*# -> (.+?)\s*$", code, re.M)]
    printed = stdout.splitlines()
    position = 0
    for promise in promised:
        assert promise in printed[position:], f"{line}: the page says {promise!r}, printed {printed!r}"
        position = printed.index(promise, position) + 1


def test_the_reservation_scenario_output_matches_the_example():
    [(_, shown, _)] = [b for b in blocks("", "docs/guides/reservations.md") if "ReservationScheduler admits:" in b[1]]
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


@pytest.mark.timeout(600)
def test_the_docs_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: every page in the nav, every link resolves, the API
    reference renders from the package and its stubs. The docs tools are in the
    test extra; without them this fails (it never skips) and says how to install them."""
    import importlib.util

    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python") if importlib.util.find_spec(m.split(".")[0]) is None]
    assert not missing, f"the docs build needs {missing}: pip install '.[docs]' (also in '.[test]')"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=540, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "schedulers" / "index.html").read_text(encoding="utf-8")
    assert 'id="plugin_scheduling.ReservationScheduler"' in reference  # rendered from the stubs
    differences = (tmp_path / "site" / "differences" / "index.html").read_text(encoding="utf-8")
    assert "Monotonic clock" in differences  # included from README, one source
