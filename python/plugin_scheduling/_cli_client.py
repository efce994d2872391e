"""``python -m plugin_scheduling jobs --url URL [--token-file F] ...``: the
service's command-line client, with ``squeue``/``scancel`` habits.

``submit [--name N] [--project P] [--priority X] [--cpu C] [--memory-mb M]
[--gpus G] [--vram-mb V] [--estimated-duration S] -- ARGV...`` |
``list [--watch [SECONDS]] [--state S] [--user U]`` | ``show ID`` |
``cancel ID`` | ``pause ID`` | ``resume ID`` | ``logs ID [--tail N]``;
``--json`` everywhere. The token comes from ``--token-file`` (default
``$XDG_CONFIG_HOME/plugin-scheduling/token``, else the one token of the
``tokens.json`` that ``serve`` created there), else ``$PLUGIN_SCHEDULING_TOKEN``.
Standard library only (``urllib``). Exit status: 0 done, 1 the server said
no (its error printed), 2 bad usage, 3 the server cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

_STATES = ("QUEUED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED")


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def wants_client(argv: Sequence[str]) -> bool:
    """``jobs ... --url ...`` (before any ``--``): the client, not the journal reader."""
    if not argv or argv[0] != "jobs":
        return False
    head = list(argv[1:])
    if "--" in head:
        head = head[: head.index("--")]
    return any(a == "--url" or a.startswith("--url=") for a in head)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m plugin_scheduling jobs", description="jobs on a plugin-scheduling server")
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8765")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token (default $XDG_CONFIG_HOME/plugin-scheduling/token)")
    p.add_argument("--json", action="store_true", help="print the server's JSON")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("submit", help="submit ARGV (after --) as a job; never run through a shell")
    s.add_argument("--name", default=None)
    s.add_argument("--project", default=None)
    s.add_argument("--queue", default=None)
    s.add_argument("--priority", type=float, default=None)
    s.add_argument("--cpu", type=float, default=None, dest="cpu_cores")
    s.add_argument("--memory-mb", type=float, default=None)
    s.add_argument("--gpus", type=int, default=None, dest="gpu_count")
    s.add_argument("--vram-mb", type=float, default=None)
    s.add_argument("--estimated-duration", type=float, default=None, metavar="SECONDS")
    s.add_argument("argv", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    ls = sub.add_parser("list", help="a table like squeue")
    ls.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS", help="refresh until Ctrl-C (default every 2 s)")
    ls.add_argument("--state", choices=_STATES, type=str.upper)
    ls.add_argument("--user")
    ls.add_argument("--project")
    for name in ("show", "cancel", "pause", "resume"):
        sub.add_parser(name, help=f"{name} a job").add_argument("job_id", type=int)
    lg = sub.add_parser("logs", help="a Command job's stdout and stderr")
    lg.add_argument("job_id", type=int)
    lg.add_argument("--tail", type=int, default=100)
    return p


def _token(path: str | None) -> str:
    if path is None:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        default = Path(base) / "plugin-scheduling" / "token"
        server_file = default.with_name("tokens.json")  # what 'serve' made, on the same host
        if default.exists():
            path = str(default)
        elif server_file.exists():
            path = str(server_file)
        elif os.environ.get("PLUGIN_SCHEDULING_TOKEN"):
            return os.environ["PLUGIN_SCHEDULING_TOKEN"].strip()
        else:
            raise _Failed(2, f"no token: give --token-file, write it to {default}, or set PLUGIN_SCHEDULING_TOKEN")
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise _Failed(2, f"cannot read token file {path}: {e.strerror or e}") from None
    if text.startswith("{"):  # a server's tokens file: its only token
        try:
            tokens = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Failed(2, f"token file {path} is neither a token nor a tokens file: {e}") from None
        if not isinstance(tokens, dict) or len(tokens) != 1:
            raise _Failed(2, f"tokens file {path} holds {len(tokens) if isinstance(tokens, dict) else 'no'} tokens; give a file with one")
        return str(next(iter(tokens)))
    return text


class _Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["error"]
                msg = err["message"] + (f" (field {err['field']})" if err.get("field") else "")
            except (ValueError, KeyError, TypeError):
                msg = str(e)
            raise _Failed(1, f"{e.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            raise _Failed(3, f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None


def _t(iso: str | None) -> datetime.datetime | None:
    return None if iso is None else datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _short(iso: str | None) -> str:
    t = _t(iso)
    return "-" if t is None else t.astimezone().strftime("%m-%d %H:%M:%S")


def _elapsed(j: dict[str, Any]) -> str:
    start = _t(j["started_at"])
    if start is None:
        return "-"
    end = _t(j["ended_at"]) or datetime.datetime.now(datetime.timezone.utc)
    s = int(max((end - start).total_seconds(), 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _reason(j: dict[str, Any]) -> str:
    r = j["reason"]
    if j["state"] == "QUEUED":
        start = f" start~{_short(j['estimated_start'])}" if j["estimated_start"] else ""
        return f"({r['category'] or 'next'}) #{j['position']}{start} {r['message'] or ''}".strip()
    if j["state"] == "FAILED":
        return (j["error"] or "")[:80]
    return r["message"] or ""


def _table(jobs: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':>6} {'NAME':<16} {'USER':<10} {'PROJECT':<10} {'STATE':<9} {'SUBMITTED':<14} {'STARTED':<14} {'ELAPSED':>8}  REASON"]
    for j in jobs:
        lines.append(
            f"{j['id']:>6} {j['name'][:16]:<16} {(j['user'] or '-')[:10]:<10} {(j['project'] or '-')[:10]:<10} {j['state']:<9} "
            f"{_short(j['submitted_at']):<14} {_short(j['started_at']):<14} {_elapsed(j):>8}  {_reason(j)}"
        )
    return "\n".join(lines)


def _show(j: dict[str, Any]) -> str:
    return "\n".join(f"{k:>18}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in j.items())


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        client = _Client(args.url, _token(args.token_file))
        return _run(client, args)
    except _Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130


def _run(client: _Client, args: argparse.Namespace) -> int:
    out: Any
    if args.action == "submit":
        argv = list(args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        if not argv:
            raise _Failed(2, "submit needs the command after --, e.g. submit -- python train.py")
        body: dict[str, Any] = {"command": argv}
        for key in ("name", "project", "queue", "priority"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        if args.estimated_duration is not None:
            body["estimated_duration"] = args.estimated_duration
        req = {k: getattr(args, k) for k in ("cpu_cores", "memory_mb", "gpu_count", "vram_mb") if getattr(args, k) is not None}
        if req:
            body["requirements"] = req
        out = client.call("POST", "/api/v1/jobs", body)
        print(json.dumps(out, indent=2) if args.json else f"submitted job {out['id']} ({out['state']})")
        return 0
    if args.action == "list":
        from urllib.parse import urlencode

        query = {k: v for k, v in (("state", args.state), ("user", args.user), ("project_id", args.project)) if v}
        path = "/api/v1/jobs" + ("?" + urlencode(query) if query else "")
        while True:
            jobs = client.call("GET", path)
            text = json.dumps(jobs, indent=2) if args.json else _table(jobs)
            if args.watch is None:
                print(text)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + f"every {args.watch:g}s: {args.url}  {time.strftime('%H:%M:%S')}\n\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    if args.action == "logs":
        out = client.call("GET", f"/api/v1/jobs/{args.job_id}/logs?tail={args.tail}")
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            sys.stdout.write(out["stdout"])
            sys.stderr.write(out["stderr"])
        return 0
    if args.action == "show":
        out = client.call("GET", f"/api/v1/jobs/{args.job_id}")
    else:
        out = client.call("POST", f"/api/v1/jobs/{args.job_id}/{args.action}")
    print(json.dumps(out, indent=2) if args.json else (_show(out) if args.action == "show" else f"job {out['id']}: {out['state']}"))
    return 0
