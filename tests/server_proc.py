"""A real ``python -m plugin_scheduling serve`` on loopback, for the service tests.

``ServerProc(tmp_path, tokens).start()`` picks a free port, writes the tokens
file (0600) and waits until the server answers; ``.kill()`` SIGKILLs it,
``.stop()`` sends SIGTERM and waits. Its output goes to ``server.log``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

import plugin_scheduling

PACKAGE_ROOT = str(Path(plugin_scheduling.__file__).resolve().parent.parent)

ANN = "ann-token-0123456789abcdef"  # vision
BOB = "bob-token-0123456789abcdef"  # nlp
CAROL = "carol-token-0123456789abcd"  # vision and nlp
ADMIN = "admin-token-0123456789abcd"

TOKENS = {
    ANN: {"user": "ann", "projects": ["vision"], "admin": False},
    BOB: {"user": "bob", "projects": ["nlp"], "admin": False},
    CAROL: {"user": "carol", "projects": ["vision", "nlp"], "admin": False},
    ADMIN: {"user": "root", "projects": [], "admin": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tokens(path: Path, tokens: Mapping[str, Any], mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(tokens), f)
    os.chmod(path, mode)
    return path


def env(tmp: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["XDG_STATE_HOME"] = str(tmp / "state")
    e["XDG_CONFIG_HOME"] = str(tmp / "config")
    e.pop("QUOTA_PROVIDER", None)
    e.pop("SCHEDULING_POLICY", None)
    return e


class ServerProc:
    def __init__(self, tmp: Path, tokens: Mapping[str, Any] | None = TOKENS, extra: Sequence[str] = (), journal: Path | None = None, env_extra: Mapping[str, str] | None = None) -> None:
        self.tmp = tmp
        self.journal = journal or tmp / "jobs.db"
        self.tokens_path = write_tokens(tmp / "tokens.json", tokens) if tokens is not None else None
        self.extra = list(extra)
        self.env_extra = dict(env_extra or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        a = [sys.executable, "-m", "plugin_scheduling", "serve", "--port", str(self.port), "--journal", str(self.journal), "--log-level", "warning"]
        if self.tokens_path is not None:
            a += ["--tokens", str(self.tokens_path)]
        return a + self.extra

    def start(self, timeout: float = 30.0) -> "ServerProc":
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), env={**env(self.tmp), **self.env_extra}, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(self.url + "/api/v1/whoami", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"server did not answer within {timeout} s:\n{self.log.read_text()}")

    def client(self, token: str | None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
