"""The shared ledger's view (issue 13): ``python -m plugin_scheduling ledger``
and ``_shared_ledger_view`` read a ledger file (here written in layout 1,
``PSLEDGER 1 <length>`` then JSON, which the package still reads; it writes
layout 2, crash-atomic, see ``src/core/reserve/shared/format.rs``), show the
grants and waiters of live processes with pid and process name, leave dead
processes out, and refuse corrupt, newer and foreign files naming the path.
(The cross-process allocation tests of the ledger itself are Rust tests:
``cargo test -p plugin-scheduling-core shared``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugin_scheduling import SharedLedgerError
from plugin_scheduling.__main__ import main
from plugin_scheduling._core import _shared_ledger_view


def _start_time(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 1 :].split()[22 - 3])


def _me() -> dict[str, int]:
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def _grant(gid: int, plugin: str, vram: float | None) -> dict[str, Any]:
    return {
        "id": gid, "plugin": plugin, "devices": [0], "vram_mb": vram,
        "pools": [["ram_mb", 1000.0]], "granted_at": 1.0, "started": True,
        "leased": False, "pids": [], "seen_used": [0.0], "seen_pool_used": [None],
        "job": None, "expected_end": None, "without_gpu_figures": False,
    }


def _waiter(wid: int, plugin: str, owner: dict[str, int]) -> dict[str, Any]:
    job = {"id": wid, "name": plugin, "priority": 50.0, "user": None, "project": None,
           "submitted": 2.0, "deadline": None, "estimated_duration": None, "size": 1.0}
    return {"id": wid, "plugin": plugin, "need": {"gpu_count": 1, "vram_mb": 20000.0, "pools": []},
            "job": job, "waker": {"owner": owner, "id": 1}, "granted": None, "stalled": False,
            "last_active": 2.0, "woken_at": None}


def _write(path: Path, state: dict[str, Any], version: int = 1) -> None:
    body = json.dumps(state).encode()
    path.write_bytes(f"PSLEDGER {version} {len(body)}\n".encode() + body)
    path.chmod(0o600)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = {"pid": dead.pid, "start": 1}
    state = {
        "grants": [{"owner": _me(), "grant": _grant(0, "llm", 8000.0)},
                   {"owner": ghost, "grant": _grant(1, "ghost", 4000.0)}],
        "next_grant": 2,
        "waiters": [_waiter(0, "whisper", _me()), _waiter(1, "gone", ghost)],
        "next_waiter": 2,
    }
    path = tmp_path / "gpu"
    _write(path, state)
    return path


def test_view_shows_live_processes_with_names(ledger: Path) -> None:
    before = ledger.read_bytes()
    view = _shared_ledger_view(str(ledger))
    assert view["path"] == str(ledger) and view["exists"]
    assert [(g["pid"], g["plugin"], g["vram_mb"]) for g in view["grants"]] == [(os.getpid(), "llm", 8000.0)]
    assert [(w["pid"], w["plugin"]) for w in view["waiters"]] == [(os.getpid(), "whisper")]
    assert view["grants"][0]["process"] == Path("/proc/self/comm").read_text().strip()
    assert ledger.read_bytes() == before  # a view changes nothing


def test_cli_prints_a_process_table_and_json(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", str(ledger)]) == 0
    out = capsys.readouterr().out
    assert f"Shared ledger {ledger}" in out
    assert "llm" in out and "running" in out and "whisper" in out and "waiting" in out
    assert "ghost" not in out and "gone" not in out
    assert main(["ledger", str(ledger), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grants"][0]["plugin"] == "llm"


def test_cli_as_a_module(ledger: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "plugin_scheduling", "ledger", str(ledger)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "llm" in run.stdout and "whisper" in run.stdout


def test_a_missing_ledger_is_reported_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nothing"
    assert main(["ledger", str(path)]) == 0
    assert "no such ledger yet" in capsys.readouterr().out
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"hello\n", "is not a plugin-scheduling ledger"),
        (b"PSLEDGER 1 5\n{oops", "invalid entry"),
        (b"PSLEDGER 1 999\n{}", "corrupt"),
        (b"PSLEDGER 7 2\n{}", "newer than this package"),
    ],
)
def test_bad_files_are_refused_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: str
) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(SharedLedgerError, match=words) as info:
        _shared_ledger_view(str(path))
    assert str(path) in str(info.value)
    assert main(["ledger", str(path)]) == 1
    assert str(path) in capsys.readouterr().err
    assert path.read_bytes() == content


def test_another_users_file_is_refused(ledger: Path) -> None:
    assert os.geteuid() == 0, "this test gives the file to nobody with chown: run it as root"
    os.chown(ledger, 65534, 65534)
    with pytest.raises(SharedLedgerError, match="owned by uid 65534") as info:
        _shared_ledger_view(str(ledger))
    assert str(ledger) in str(info.value)


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="name"):
        _shared_ledger_view("")
    with pytest.raises(TypeError):
        _shared_ledger_view(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd", "fifo", "huge"])
def test_what_is_not_a_ledger_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """Issue 24 #7: a device, a FIFO (never blocks), a file of something
    else or a huge one: refused before its body is read, naming the path,
    and never with the advice to remove it."""
    if target == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif target == "huge":
        path = tmp_path / "huge"
        path.write_bytes(b"PSLEDGER 2\n")
        os.truncate(path, 3 << 30)  # sparse
    else:
        path = Path(target)
    with pytest.raises(SharedLedgerError) as info:
        _shared_ledger_view(str(path))
    message = str(info.value)
    assert str(path) in message and "remove" not in message
    assert ("larger than any" if target == "huge" else "is not a plugin-scheduling ledger") in message
    assert main(["ledger", str(path)]) == 1
    assert "remove" not in capsys.readouterr().err


@pytest.mark.parametrize("vram", [2_147_483_648.0, 1.8e19, -1.0, None])
def test_absurd_grants_in_a_file_are_refused(tmp_path: Path, vram: float | None) -> None:
    """Issue 24 #12: what is read is validated like what is passed in: a
    hand-edited absurd, negative or missing (NaN) amount refuses the file,
    naming the path and the entry, instead of blocking every process."""
    path = tmp_path / "edited"
    _write(path, {"grants": [{"owner": _me(), "grant": _grant(0, "llm", vram)}], "next_grant": 1,
                  "waiters": [], "next_waiter": 0})
    with pytest.raises(SharedLedgerError, match="invalid entry") as info:
        _shared_ledger_view(str(path))
    assert str(path) in str(info.value)
    if vram is not None:
        assert 'grant 0 of "llm"' in str(info.value)
    from plugin_scheduling import ReservationScheduler

    with pytest.raises(SharedLedgerError, match="invalid entry"):
        ReservationScheduler(shared=str(path))
