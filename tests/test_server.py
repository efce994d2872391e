"""The service against a real server (``python -m plugin_scheduling serve``
in a subprocess on loopback): every route and error, the authorization
matrix, SSE filtering, restart durability."""

from __future__ import annotations

import datetime
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from server_proc import ADMIN, ANN, BOB, CAROL, TOKENS, ServerProc, env, wait_for, write_tokens

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("server")
    s = ServerProc(tmp, extra=["--cpu-cores", "2", "--simulated-gpus", "24576,24576", "--quotas", f"sqlite:{tmp / 'quotas.db'}"]).start()
    yield s
    s.stop()


@pytest.fixture
def clean(srv: ServerProc) -> Iterator[ServerProc]:
    """Every job left unfinished by the test is cancelled after it."""
    yield srv
    with srv.client(ADMIN) as c:
        for j in c.get("/api/v1/jobs").json():
            if j["state"] in ("QUEUED", "RUNNING", "PAUSED"):
                c.post(f"/api/v1/jobs/{j['id']}/cancel")
        wait_for(lambda: all(j["state"] not in ("QUEUED", "RUNNING", "PAUSED") for j in c.get("/api/v1/jobs").json()), what="all jobs ended")


def submit(c: httpx.Client, argv: list[str], **body: Any) -> dict[str, Any]:
    r = c.post("/api/v1/jobs", json={"command": argv, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def job(c: httpx.Client, job_id: int) -> dict[str, Any]:
    r = c.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def until_state(c: httpx.Client, job_id: int, *states: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (j := job(c, job_id))["state"] in states and j, what=f"job {job_id} in {states}"))


def error(r: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["field"] == field, body
    return dict(body["error"])


# ------------------------------------------------------------------- auth


def test_missing_unknown_and_malformed_tokens_are_401(srv: ServerProc) -> None:
    for token, headers in ((None, {}), ("x" * 30, {}), (None, {"Authorization": "Basic abc"}), (None, {"Authorization": "Bearer"})):
        with srv.client(token) as c:
            for method, path in (("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs/1"), ("GET", "/api/v1/events"),
                                 ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/api/v1/gpus"), ("GET", "/api/v1/queues")):
                r = c.request(method, path, headers=headers, json={} if method == "POST" else None)
                error(r, 401, "unauthorized", "Authorization")
                assert r.headers["www-authenticate"] == "Bearer"


def test_tokens_file_readable_by_others_is_refused_naming_path_and_mode(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens.json", TOKENS, mode=0o644)
    out = subprocess.run([sys.executable, "-m", "plugin_scheduling", "serve", "--tokens", str(path), "--port", "1"],
                         env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert str(path) in out.stderr and "0644" in out.stderr and "0600" in out.stderr, out.stderr
    link = tmp_path / "link.json"
    os.chmod(path, 0o600)
    link.symlink_to(path)
    out = subprocess.run([sys.executable, "-m", "plugin_scheduling", "serve", "--tokens", str(link), "--port", "1"],
                         env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "symlink" in out.stderr, out.stderr


def test_tokens_file_with_bad_entries_is_refused_naming_the_field(tmp_path: Path) -> None:
    from plugin_scheduling.server import TokenFileError, load_tokens

    for tokens, needle in (({"short": {"user": "a"}}, "at least 16"), ({"x" * 20: {"user": "a", "projects": "vision"}}, "projects"),
                           ({"x" * 20: {"user": "a", "admin": "yes"}}, "admin"), ({"x" * 20: {"user": "a", "role": 1}}, "role"),
                           ({"x" * 20: {"user": ""}}, "user")):
        path = write_tokens(tmp_path / "t.json", tokens)
        with pytest.raises(TokenFileError, match=needle):
            load_tokens(path)


def test_serve_without_tokens_creates_an_admin_token_file_and_says_where(tmp_path: Path) -> None:
    s = ServerProc(tmp_path, tokens=None).start()
    try:
        path = tmp_path / "config" / "plugin-scheduling" / "tokens.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        wait_for(lambda: str(path) in s.log.read_text(), what="the path printed")
        (token, ident), = json.loads(path.read_text()).items()
        assert ident["admin"] is True
        with s.client(token) as c:
            assert c.get("/api/v1/whoami").json()["admin"] is True
    finally:
        s.stop()
    s2 = ServerProc(tmp_path, tokens=None).start()  # a second start keeps the file
    try:
        with s2.client(token) as c:
            assert c.get("/api/v1/whoami").status_code == 200
    finally:
        s2.stop()


def test_binds_loopback_by_default(srv: ServerProc) -> None:
    out = subprocess.run([sys.executable, "-m", "plugin_scheduling", "serve", "--help"], env=env(srv.tmp), capture_output=True, text=True, timeout=60)
    assert "default 127.0.0.1" in out.stdout
    import psutil

    assert srv.proc is not None
    addrs = {c.laddr.ip for c in psutil.Process(srv.proc.pid).net_connections("tcp") if c.status == "LISTEN"}
    assert addrs == {"127.0.0.1"}, addrs


# -------------------------------------------------------- authorization


def test_authorization_matrix(clean: ServerProc) -> None:
    with clean.client(ANN) as ann, clean.client(BOB) as bob, clean.client(CAROL) as carol, clean.client(ADMIN) as admin:
        a = submit(ann, ["sleep", "30"], name="ann-job")
        assert a["user"] == "ann" and a["project"] == "vision"
        b = submit(bob, ["sleep", "30"], name="bob-job")
        # another project's job: 404, whatever the action
        for path in (f"/api/v1/jobs/{a['id']}", f"/api/v1/jobs/{a['id']}/logs", f"/api/v1/events?job_id={a['id']}"):
            error(bob.get(path), 404, "not_found", "job_id")
        for action in ("cancel", "pause", "resume"):
            error(bob.post(f"/api/v1/jobs/{a['id']}/{action}"), 404, "not_found")
        error(bob.patch(f"/api/v1/jobs/{a['id']}", json={"priority": 90}), 404, "not_found")
        assert job(ann, a["id"])["state"] in ("QUEUED", "RUNNING")
        # lists: only one's projects, whatever the filter asks
        assert {j["id"] for j in ann.get("/api/v1/jobs").json()} == {a["id"]}
        assert {j["id"] for j in bob.get("/api/v1/jobs").json()} == {b["id"]}
        assert bob.get("/api/v1/jobs", params={"project_id": "vision"}).json() == []
        assert bob.get("/api/v1/jobs", params={"user": "ann"}).json() == []
        assert {j["id"] for j in carol.get("/api/v1/jobs").json()} == {a["id"], b["id"]}
        assert {j["id"] for j in admin.get("/api/v1/jobs").json()} >= {a["id"], b["id"]}
        # submitting into another project: 403; a member of two must say which
        error(ann.post("/api/v1/jobs", json={"command": ["true"], "project": "nlp"}), 403, "forbidden", "project")
        error(carol.post("/api/v1/jobs", json={"command": ["true"]}), 422, "invalid", "project")
        # carol (vision member) may act on ann's job; the user is always the token's
        c = submit(carol, ["true"], project="vision")
        assert c["user"] == "carol"
        assert carol.post(f"/api/v1/jobs/{a['id']}/cancel").status_code == 200
        # quotas: PATCH is admin-only (403 even for a member); GET of another project 404
        error(ann.patch("/api/v1/queues/quota/vision", json={"gpu_quota": 1}), 403, "forbidden")
        error(ann.get("/api/v1/queues/quota/nlp"), 404, "not_found", "project_id")
        error(ann.get("/api/v1/queues", params={"project_id": "nlp"}), 404, "not_found", "project_id")
        error(ann.post("/api/v1/jobs/scheduler/trigger", json={"project_id": "nlp"}), 404, "not_found", "project_id")
        assert admin.patch("/api/v1/queues/quota/vision", json={"gpu_quota": 8}).status_code == 200
        assert ann.get("/api/v1/queues/quota/vision").json()["gpu_quota"] == 8


# ------------------------------------------------------------ validation


def test_bad_input_is_422_naming_the_field(clean: ServerProc) -> None:
    with clean.client(ANN) as c:
        cases = [
            ({"command": []}, "command"),
            ({"command": "sleep 1"}, "command"),
            ({"command": [""]}, "command"),
            ({"command": ["a\x00b"]}, "command"),
            ({"command": ["true"], "priority": 101}, "priority"),
            ({"command": ["true"], "priority": "high"}, "priority"),
            ({"command": ["true"], "requirements": {"gpu_count": -1}}, "requirements.gpu_count"),
            ({"command": ["true"], "requirements": {"cpu_cores": "many"}}, "requirements.cpu_cores"),
            ({"command": ["true"], "requirements": {"gpus": 1}}, "requirements.gpus"),
            ({"command": ["true"], "deadline": -5}, "deadline"),
            ({"command": ["true"], "env": {"A B": "x"}}, "env"),
            ({"command": ["true"], "queue": "no-such-queue"}, "queue"),
            ({"command": ["true"], "shell": True}, "shell"),
            ({"name": "x"}, "command"),
        ]
        for body, field in cases:
            error(c.post("/api/v1/jobs", json=body), 422, "invalid", field)
        error(c.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid")
        error(c.get("/api/v1/jobs", params={"state": "SLEEPING"}), 422, "invalid", "state")
        error(c.get("/api/v1/jobs/abc"), 422, "invalid", "job_id")
        error(c.get("/api/v1/jobs/1/logs", params={"tail": 0}), 422, "invalid", "tail")
        error(c.patch("/api/v1/jobs/1", json={"priority": -1}), 422, "invalid", "priority")
        error(c.get("/api/v1/jobs/999999"), 404, "not_found", "job_id")
        # found by the schemathesis run (each was a 500, a 400 or accepted)
        error(c.get("/api/v1/jobs/-1"), 422, "invalid", "job_id")
        error(c.post("/api/v1/jobs/-5/cancel"), 422, "invalid", "job_id")
        error(c.post("/api/v1/jobs", content=b'{"command": ["\xff\xfe"]}', headers={"content-type": "application/json"}), 422, "invalid")
        error(c.post("/api/v1/jobs", json={"command": ["true"], "priority": "50"}), 422, "invalid", "priority")
        error(c.get("/api/v1/queues/quota/%C3%A5%C2%91"), 422, "invalid", "project_id")
        r = c.options("/api/v1/jobs")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
        error(c.get("/api/v1/nothing-here"), 404, "not_found")
    with clean.client(ADMIN) as a:
        error(a.patch("/api/v1/queues/quota/vision", json={"gpu_quota": -1}), 422, "invalid", "gpu_quota")
        error(a.patch("/api/v1/queues/quota/vision", json={"cpus": 1}), 422, "invalid", "cpus")
        error(a.patch("/api/v1/queues/quota/vision", json={"enforce_quota": 0}), 422, "invalid", "enforce_quota")
        error(a.patch("/api/v1/queues/quota/vision", json={"enforce_quota": None}), 422, "invalid", "enforce_quota")


def test_body_over_the_limit_is_413(srv: ServerProc) -> None:
    with srv.client(ANN) as c:
        big = {"command": ["echo", "x" * 30000] * 40}
        error(c.post("/api/v1/jobs", json=big), 413, "body_too_large", "body")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"command": ["echo", "'
            for _ in range(2000):
                yield b"y" * 1024
            yield b'"]}'

        error(c.post("/api/v1/jobs", content=chunks(), headers={"content-type": "application/json"}), 413, "body_too_large")
        assert c.get("/api/v1/whoami").status_code == 200


def test_the_command_never_runs_through_a_shell(clean: ServerProc, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with clean.client(ANN) as c:
        j = submit(c, ["echo", f"$(touch {marker})", ";", "touch", str(marker), "|", "id"])
        until_state(c, j["id"], "COMPLETED")
        logs = c.get(f"/api/v1/jobs/{j['id']}/logs").json()
        assert logs["stdout"] == f"$(touch {marker}) ; touch {marker} | id\n"
        assert not marker.exists()
        assert j["command"] == ["echo", f"$(touch {marker})", ";", "touch", str(marker), "|", "id"]


# --------------------------------------------------------------- jobs


def test_submit_get_list_and_lifecycle(clean: ServerProc) -> None:
    with clean.client(ANN) as c:
        j = submit(c, ["sleep", "30"], name="train", priority=70, estimated_duration=30, requirements={"cpu_cores": 1, "gpu_count": 1, "vram_mb": 2000})
        for key in ("id", "name", "state", "user", "project", "queue", "priority", "submitted_at", "started_at", "ended_at", "reason", "position", "ahead", "estimated_start"):
            assert key in j
        assert j["name"] == "train" and j["priority"] == 70 and j["queue"] == "default"
        assert j["submitted_at"].endswith("Z")
        datetime.datetime.fromisoformat(j["submitted_at"].replace("Z", "+00:00"))
        r = until_state(c, j["id"], "RUNNING")
        assert r["started_at"] is not None and r["position"] is None and r["reason"] == {"category": None, "message": None}
        p = c.post(f"/api/v1/jobs/{j['id']}/pause")
        assert p.status_code == 200 and p.json()["state"] == "PAUSED"
        assert job(c, j["id"])["reason"]["category"] == "held"
        error(c.post(f"/api/v1/jobs/{j['id']}/pause"), 409, "invalid_transition")
        assert c.post(f"/api/v1/jobs/{j['id']}/resume").json()["state"] == "RUNNING"
        error(c.post(f"/api/v1/jobs/{j['id']}/resume"), 409, "invalid_transition")
        assert c.patch(f"/api/v1/jobs/{j['id']}", json={"priority": 90}).json()["priority"] == 90
        assert c.post(f"/api/v1/jobs/{j['id']}/cancel").status_code == 200
        done = until_state(c, j["id"], "CANCELLED")
        assert done["ended_at"] is not None
        error(c.post(f"/api/v1/jobs/{j['id']}/cancel"), 409, "invalid_transition")
        assert [x["id"] for x in c.get("/api/v1/jobs", params={"state": "CANCELLED"}).json()].count(j["id"]) == 1
        assert c.get("/api/v1/jobs", params={"state": "RUNNING"}).json() == []
        assert all(x["user"] == "ann" for x in c.get("/api/v1/jobs", params={"user": "ann"}).json())


def test_why_it_waits_who_is_ahead_and_when_it_starts(clean: ServerProc) -> None:
    with clean.client(ADMIN) as admin, clean.client(ANN) as ann, clean.client(BOB) as bob:
        big = submit(admin, ["sleep", "60"], name="big", project="ops", requirements={"cpu_cores": 2}, estimated_duration=40)
        big = until_state(admin, big["id"], "RUNNING")
        b = submit(ann, ["sleep", "1"], name="b", requirements={"cpu_cores": 1}, estimated_duration=10)
        c2 = submit(bob, ["sleep", "1"], name="c", requirements={"cpu_cores": 2}, estimated_duration=5)
        d = submit(ann, ["sleep", "1"], name="d", requirements={"cpu_cores": 2})
        e = submit(ann, ["sleep", "1"], name="e", requirements={"cpu_cores": 1}, estimated_duration=5)
        admin.post("/api/v1/jobs/scheduler/trigger", json={})
        vb = wait_for(lambda: (x := job(ann, b["id"]))["reason"]["category"] == "resources" and x, what="b blocked on resources")
        assert vb["position"] == 1 and vb["ahead"] == 0
        assert "CPU" in vb["reason"]["message"]
        started = datetime.datetime.fromisoformat(big["started_at"].replace("Z", "+00:00"))
        est_b = datetime.datetime.fromisoformat(vb["estimated_start"].replace("Z", "+00:00"))
        assert abs((est_b - started).total_seconds() - 40) < 5, (vb, big)
        vc = job(bob, c2["id"])
        assert vc["position"] == 2 and vc["ahead"] == 1 and vc["reason"]["category"] == "policy"
        est_c = datetime.datetime.fromisoformat(vc["estimated_start"].replace("Z", "+00:00"))
        assert abs((est_c - est_b).total_seconds() - 10) < 1  # after b ends: c needs both cores
        vd = job(ann, d["id"])
        assert vd["position"] == 3 and vd["estimated_start"] is not None  # after c (5 s)
        ve = job(ann, e["id"])
        assert ve["position"] == 4 and ve["estimated_start"] is None  # d has no estimate: unknown, not a guess
        queue_order = [x["id"] for x in ann.get("/api/v1/jobs", params={"state": "QUEUED"}).json()]
        assert queue_order == [b["id"], d["id"], e["id"]]  # ann's own, in the policy's order


def test_logs_of_a_command_with_tail(clean: ServerProc) -> None:
    with clean.client(ANN) as c:
        j = submit(c, [sys.executable, "-c", "import sys\nfor i in range(500): print('out', i)\nprint('err line', file=sys.stderr)\nsys.exit(3)"])
        done = until_state(c, j["id"], "FAILED")
        assert "exited with 3" in done["error"] and "err line" in done["error"]
        logs = c.get(f"/api/v1/jobs/{j['id']}/logs", params={"tail": 3}).json()
        assert logs["stdout"] == "out 497\nout 498\nout 499\n" and logs["stderr"] == "err line\n" and logs["truncated"] is True
        full = c.get(f"/api/v1/jobs/{j['id']}/logs", params={"tail": 10000}).json()
        assert full["stdout"].count("\n") == 500 and full["truncated"] is False


def test_logs_are_bounded(tmp_path: Path) -> None:
    from plugin_scheduling.jobs import Command, JobScheduler

    s = JobScheduler(journal=tmp_path / "j.db", log_limit_bytes=10_000, poll_interval=0.01)
    job_id = s.submit_job("loud", run=Command([sys.executable, "-c", "import sys\nfor i in range(200000): print(i)"]))
    s.run_until_complete(timeout=60)
    logs = tmp_path / "j.db.logs"
    sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    assert sizes[f"{job_id}.stdout.log"] <= 10_000 and sizes[f"{job_id}.stdout.log.1"] <= 10_000, sizes
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs.iterdir())
    assert (logs / f"{job_id}.stdout.log").read_text().endswith("199999\n")
    kept = s.job_logs(job_id, tail=2)
    assert kept == {"stdout": "199998\n199999\n", "stderr": "", "truncated": True}
    with pytest.raises(ValueError, match="tail"):
        s.job_logs(job_id, tail=0)


# ------------------------------------------------------------- seed 004


def test_seed_004_routes_and_shapes(clean: ServerProc) -> None:
    with clean.client(ADMIN) as admin, clean.client(ANN) as ann:
        info = ann.get("/api/v1/jobs/scheduler/info").json()
        assert set(info) == {"policy", "quota_provider", "active_queues", "pending_jobs"}
        assert info["policy"] == "fifo" and info["quota_provider"] == "local"
        t = ann.post("/api/v1/jobs/scheduler/trigger", json={"project_id": "vision"})
        assert t.status_code == 200 and set(t.json()) == {"scheduled_count", "remaining_pending"}
        assert admin.post("/api/v1/jobs/scheduler/trigger").status_code == 200
        submit(ann, ["true"])
        qs = ann.get("/api/v1/queues", params={"project_id": "vision"}).json()
        assert isinstance(qs, list) and qs[0]["name"] == "default"
        assert {"id", "name", "priority", "running_jobs", "pending_jobs", "total_jobs"} <= set(qs[0])
        assert qs[0]["total_jobs"] >= 1
        assert ann.get("/api/v1/queues").status_code == 200
        error(ann.get("/api/v1/queues/quota/vision-nope"), 404)
        q = admin.patch("/api/v1/queues/quota/vision", json={"cpu_quota": 100.0, "memory_quota": 500.0, "gpu_quota": 10, "enforce_quota": True})
        assert q.status_code == 200, q.text
        got = ann.get("/api/v1/queues/quota/vision").json()
        for key in ("cpu_quota", "used_cpu", "available_cpu", "cpu_usage_percent", "provider", "synced_at"):
            assert key in got
        assert got["cpu_quota"] == 100.0 and got["provider"] == "local" and got["synced_at"].endswith("Z")
        s = ann.post("/api/v1/queues/quota/vision/sync")
        assert s.status_code == 200 and s.json()["synced_at"] >= got["synced_at"]
        assert admin.patch("/api/v1/queues/quota/vision", json={"cpu_quota": None}).json()["cpu_quota"] is None


def test_quota_reason_category(clean: ServerProc) -> None:
    with clean.client(ADMIN) as admin, clean.client(BOB) as bob:
        assert admin.patch("/api/v1/queues/quota/nlp", json={"gpu_quota": 1, "enforce_quota": True}).status_code == 200
        try:
            first = submit(bob, ["sleep", "30"], requirements={"cpu_cores": 0.5, "gpu_count": 1})
            until_state(bob, first["id"], "RUNNING")
            second = submit(bob, ["sleep", "30"], requirements={"cpu_cores": 0.5, "gpu_count": 1})
            v = wait_for(lambda: (x := job(bob, second["id"]))["reason"]["category"] == "quota" and x, what="quota reason")
            assert "nlp" in v["reason"]["message"]
        finally:
            admin.patch("/api/v1/queues/quota/nlp", json={"gpu_quota": None})


# ---------------------------------------------------------------- live


class Stream:
    """An SSE stream read in a thread: ``events`` gets each ``data:`` JSON."""

    def __init__(self, srv: ServerProc, token: str, path: str = "/api/v1/events") -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = srv.client(token)
        self._ready = threading.Event()
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "the stream did not start"

    def _run(self, path: str) -> None:
        try:
            with self.client.stream("GET", path, timeout=httpx.Timeout(10.0, read=None)) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        ev = json.loads(line[5:])
                        if ev["type"] == "ready":
                            self._ready.set()
                        self.events.put(ev)
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()

    def collect(self, seconds: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.events.get(timeout=left))
            except queue.Empty:
                break
        return out

    def until(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            seen.append(ev)
            if predicate(ev):
                return seen
        raise AssertionError(f"no matching event; saw {seen}")

    def close(self) -> None:
        self.client.close()


def test_events_are_filtered_per_token(clean: ServerProc) -> None:
    ann_s, bob_s, admin_s = Stream(clean, ANN), Stream(clean, BOB), Stream(clean, ADMIN)
    try:
        with clean.client(ANN) as ann, clean.client(BOB) as bob:
            a = submit(ann, ["true"])
            ann_seen = ann_s.until(lambda e: e["job_id"] == a["id"] and e["state"] == "COMPLETED")
            assert all(set(e) >= {"type", "job_id"} for e in ann_seen)
            assert [e["state"] for e in ann_seen if e["job_id"] == a["id"] and e["type"] == "state"] == ["QUEUED", "RUNNING", "COMPLETED"]
            admin_s.until(lambda e: e["job_id"] == a["id"] and e["state"] == "COMPLETED")
            b = submit(bob, ["true"])
            bob_seen = bob_s.until(lambda e: e["job_id"] == b["id"] and e["state"] == "COMPLETED")
            assert all(e["job_id"] in (None, b["id"]) for e in bob_seen), bob_seen  # never ann's
            assert all(e["job_id"] != b["id"] for e in ann_s.collect(1.0))
    finally:
        for s in (ann_s, bob_s, admin_s):
            s.close()


def test_a_slow_event_consumer_never_blocks_the_scheduler(clean: ServerProc) -> None:
    # A client that connects and never reads: the server's bounded queue drops, jobs go on.
    import socket

    sock = socket.create_connection(("127.0.0.1", clean.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ANN}\r\n\r\n".encode())
    try:
        with clean.client(ANN) as c:
            ids = [submit(c, ["true"], name="n" * 100)["id"] for _ in range(60)]
            for j in ids:
                until_state(c, j, "COMPLETED")
    finally:
        sock.close()


# ------------------------------------------------------------- machine


def test_gpus_metrics_and_openapi(clean: ServerProc) -> None:
    with clean.client(ANN) as ann, clean.client(BOB) as bob:
        j = submit(ann, ["sleep", "30"], name="gpu-job", requirements={"cpu_cores": 0.5, "gpu_count": 1, "vram_mb": 3000})
        until_state(ann, j["id"], "RUNNING")
        g = ann.get("/api/v1/gpus").json()
        assert len(g) == 2 and g[0]["capacity_mb"] == 24576.0
        assert {"index", "capacity_mb", "reserved_mb", "used_mb", "grants", "waiters"} <= set(g[0])
        assert sum(x["reserved_mb"] for x in g) == 3000.0
        assert [gr["job"] for x in g for gr in x["grants"]] == ["gpu-job"]
        assert [gr["job"] for x in bob.get("/api/v1/gpus").json() for gr in x["grants"]] == [None]  # not bob's to name
        m = ann.get("/metrics")
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
        for name in ("plugin_scheduling_queue_length", "plugin_scheduling_running_jobs", "plugin_scheduling_gpu_memory_reserved_mb",
                     "plugin_scheduling_gpu_memory_used_mb", "plugin_scheduling_wait_seconds_bucket", "plugin_scheduling_submits_total"):
            assert name in m.text, name
        assert 'plugin_scheduling_running_jobs{project="vision",queue="default"} 1.0' in m.text
        spec = ann.get("/openapi.json").json()
        for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/logs", "/api/v1/jobs/scheduler/info", "/api/v1/jobs/scheduler/trigger",
                     "/api/v1/queues", "/api/v1/queues/quota/{project_id}", "/api/v1/queues/quota/{project_id}/sync", "/api/v1/events", "/api/v1/gpus"):
            assert path in spec["paths"], path
        assert "JobSubmit" in spec["components"]["schemas"]


def test_public_metrics_flag(tmp_path: Path) -> None:
    s = ServerProc(tmp_path, extra=["--public-metrics"]).start()
    try:
        with s.client(None) as c:
            assert c.get("/metrics").status_code == 200
            assert c.get("/openapi.json").status_code == 200
            error(c.get("/api/v1/jobs"), 401)
    finally:
        s.stop()


# ------------------------------------------------------------ browser sign-in


def test_token_in_the_url_once_sets_an_httponly_cookie_and_csrf_is_required(srv: ServerProc) -> None:
    with srv.client(None) as c:
        assert c.get("/").status_code == 401  # the sign-in page
        r = c.get("/", params={"token": "wrong" * 5})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        r = c.get("/", params={"token": ANN})
        assert r.status_code == 303 and r.headers["location"] == "./"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = c.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        assert c.get("/api/v1/whoami").json()["user"] == "ann"
        error(c.post("/api/v1/jobs", json={"command": ["true"]}), 403, "csrf")
        r = c.post("/api/v1/jobs", json={"command": ["true"]}, headers={"X-Plugin-Scheduling": "1"})
        assert r.status_code == 201
        assert c.get("/static/dashboard.js").status_code == 200
        error(c.get("/static/..%2fjobs.py"), 404)


# ------------------------------------------------------------ restart


def test_restart_after_sigkill_keeps_jobs_history_and_quotas(tmp_path: Path) -> None:
    extra = ["--cpu-cores", "1", "--quotas", f"sqlite:{tmp_path / 'quotas.db'}"]
    s = ServerProc(tmp_path, extra=extra).start()
    with s.client(ANN) as c, s.client(ADMIN) as a:
        assert a.patch("/api/v1/queues/quota/vision", json={"cpu_quota": 4}).status_code == 200
        done = submit(c, ["echo", "before"])
        until_state(c, done["id"], "COMPLETED")
        running = submit(c, ["sh", "-c", "echo first-attempt $$; exec sleep 61.25"], requirements={"cpu_cores": 1})
        until_state(c, running["id"], "RUNNING")
        queued = [submit(c, ["sleep", "1"], requirements={"cpu_cores": 1}, name=f"q{i}")["id"] for i in range(5)]
        import psutil

        def survivors() -> list[int]:
            return [p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-2:] == ["sleep", "61.25"]]

        first = wait_for(lambda: survivors() and c.get(f"/api/v1/jobs/{running['id']}/logs").json()["stdout"] and survivors(), what="the job's first attempt")
        assert len(first) == 1
    s.kill()
    wait_for(lambda: not survivors(), timeout=3.0, what="the job's process to die with its server")  # at most once
    s.start()
    try:
        with s.client(ANN) as c, s.client(BOB) as bob:
            jobs = {j["id"]: j for j in c.get("/api/v1/jobs").json()}
            assert set(jobs) >= {done["id"], running["id"], *queued}
            assert jobs[done["id"]]["state"] == "COMPLETED"
            assert c.get(f"/api/v1/jobs/{done['id']}/logs").json()["stdout"] == "before\n"
            assert jobs[running["id"]]["state"] in ("QUEUED", "RUNNING", "FAILED")
            # the output of the attempt that died with the server is still there (the scheduler's own files)
            assert f"first-attempt {first[0]}\n" in c.get(f"/api/v1/jobs/{running['id']}/logs").json()["stdout"]
            assert all(jobs[q]["state"] in ("QUEUED", "RUNNING", "COMPLETED") for q in queued)
            assert c.get("/api/v1/queues/quota/vision").json()["cpu_quota"] == 4
            error(bob.get(f"/api/v1/jobs/{done['id']}"), 404)
    finally:
        s.stop()


# ------------------------------------------------------------ CLI client


def _cli(srv: ServerProc, token_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugin_scheduling", "jobs", "--url", srv.url, "--token-file", str(token_file), *args],
                          env=env(srv.tmp), capture_output=True, text=True, timeout=60)


def test_cli_client_submit_list_show_logs_cancel(clean: ServerProc, tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text(ANN + "\n")
    out = _cli(clean, tf, "--json", "submit", "--name", "cli-job", "--cpu", "0.5", "--estimated-duration", "5", "--", "sh", "-c", "echo from-cli")
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout)
    assert j["name"] == "cli-job" and j["user"] == "ann" and j["command"] == ["sh", "-c", "echo from-cli"]
    with clean.client(ANN) as c:
        until_state(c, j["id"], "COMPLETED")
    table = _cli(clean, tf, "list")
    assert table.returncode == 0 and "cli-job" in table.stdout and "COMPLETED" in table.stdout
    assert table.stdout.splitlines()[0].split()[:9] == ["ID", "NAME", "USER", "PROJECT", "STATE", "SUBMITTED", "STARTED", "ELAPSED", "REASON"]
    assert json.loads(_cli(clean, tf, "--json", "list", "--state", "completed").stdout)[-1]["id"] == j["id"]
    assert "from-cli" in _cli(clean, tf, "logs", str(j["id"])).stdout
    assert "cli-job" in _cli(clean, tf, "show", str(j["id"])).stdout
    long = json.loads(_cli(clean, tf, "--json", "submit", "--", "sleep", "30").stdout)
    assert _cli(clean, tf, "cancel", str(long["id"])).returncode == 0
    # errors: the server's message, exit 1; unreachable server, exit 3; no command, exit 2
    tf_bob = tmp_path / "bob"
    tf_bob.write_text(BOB)
    denied = _cli(clean, tf_bob, "show", str(j["id"]))
    assert denied.returncode == 1 and "404" in denied.stderr and f"no job {j['id']}" in denied.stderr
    assert _cli(clean, tf, "submit").returncode == 2
    down = subprocess.run([sys.executable, "-m", "plugin_scheduling", "jobs", "--url", "http://127.0.0.1:9", "--token-file", str(tf), "list"],
                          env=env(clean.tmp), capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "cannot reach" in down.stderr
