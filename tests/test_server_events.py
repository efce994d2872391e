"""``GET /api/v1/events``: a slow subscriber loses only the overflow of its own
bounded queue, is told how much (``{"type": "dropped", "count": N}``), never
blocks the scheduler nor the other subscribers, and only ever gets events of
jobs its token may see. In process: the ASGI app is driven directly, with a
client whose ``send`` blocks while it "does not read"."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin_scheduling.jobs import JobScheduler
from plugin_scheduling.server import create_app

from server_proc import ADMIN, ANN, BOB, TOKENS, write_tokens

pytestmark = pytest.mark.timeout(60)

SIZE = 4


class Subscriber:
    """One ``GET /api/v1/events`` connection to ``app``. While ``reading`` is
    clear its ``send`` blocks (a client that does not read: the stream's
    generator stalls, its queue fills); ``leave()`` disconnects."""

    def __init__(self, app: Any, token: str, *, reading: bool = True, query: bytes = b"") -> None:
        self.app, self.token, self.query = app, token, query
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()
        self.gone = asyncio.Event()
        self.called = asyncio.Event()  # send was called once: the subscription exists
        self.status: int | None = None
        self.body = b""
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        self.called.set()
        await self.reading.wait()
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def connect(self) -> "Subscriber":
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/api/v1/events", "raw_path": b"/api/v1/events", "root_path": "", "query_string": self.query,
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {self.token}".encode())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80),
        }
        self.task = asyncio.get_running_loop().create_task(self.app(scope, self._receive, self._send))
        await asyncio.wait_for(self.called.wait(), 10)
        return self

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in re.findall(r"^data: ?(.*)$", self.body.decode(), re.M)]

    def jobs(self) -> list[int]:
        return [e["job_id"] for e in self.events() if e["type"] not in ("ready", "dropped")]

    def dropped(self) -> int:
        """The last (cumulative) count the stream reported, 0 if none."""
        counts = [e["count"] for e in self.events() if e["type"] == "dropped"]
        return counts[-1] if counts else 0

    async def until(self, n: int) -> None:
        """Until ``n`` data events have arrived."""
        for _ in range(2000):
            if len(self.events()) >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{len(self.events())} events, waited for {n}: {self.events()}")

    async def leave(self) -> None:
        self.reading.set()
        self.gone.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        assert self.status == 200


def _drop_metric(text: str) -> float:
    match = re.search(r"^plugin_scheduling_event_drops (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


async def _metrics(app: Any) -> float:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        return _drop_metric(r.text)


@pytest.mark.asyncio
async def test_a_slow_subscriber_loses_exactly_the_overflow_and_is_told_so() -> None:
    scheduler = JobScheduler("fifo", journal=None)
    app = create_app(scheduler, tokens=TOKENS, event_queue_size=SIZE, manage_scheduler=False)
    slow = await Subscriber(app, ADMIN, reading=False).connect()
    fast = await Subscriber(app, ADMIN).connect()
    await fast.until(1)  # ready
    n = SIZE + 7
    ids = []
    for i in range(n):  # sync: none of these can wait for a reader
        ids.append(scheduler.submit_job(f"j{i}", project="vision"))
        assert not slow.reading.is_set() and slow.body == b""  # the slow one is still stuck, yet submits go on
        await asyncio.sleep(0)  # the fast one reads as it goes
    await fast.until(1 + n)
    assert fast.jobs() == ids and fast.dropped() == 0  # a reader loses nothing
    assert scheduler.event_drops == n - SIZE
    assert await _metrics(app) == n - SIZE  # counted once, not once per layer
    slow.reading.set()
    await slow.until(1 + 1 + SIZE)  # ready, the drop notice, what fitted
    events = slow.events()
    assert events[0]["type"] == "ready" and events[1] == {"type": "dropped", "job_id": None, "count": n - SIZE}
    assert slow.jobs() == ids[:SIZE]  # the first SIZE fitted; the overflow is what was lost
    # It reads now: later events arrive whole; the count is cumulative and unchanged.
    more = [scheduler.submit_job(f"k{i}", project="nlp") for i in range(2)]
    await slow.until(1 + 1 + SIZE + 2)
    await fast.until(1 + n + 2)
    assert slow.jobs() == ids[:SIZE] + more and slow.dropped() == n - SIZE
    assert fast.jobs() == ids + more and fast.dropped() == 0
    assert await _metrics(app) == n - SIZE
    await slow.leave()
    await fast.leave()


@pytest.mark.asyncio
async def test_the_scheduler_runs_on_while_a_subscriber_is_stuck() -> None:
    scheduler = JobScheduler("fifo", journal=None, cpu_cores=2)
    app = create_app(scheduler, tokens=TOKENS, event_queue_size=SIZE, manage_scheduler=False)
    emitted: list[Any] = []
    scheduler.on_event(emitted.append)
    async with scheduler:
        slow = await Subscriber(app, ADMIN, reading=False).connect()

        def quick(_ctx: Any) -> int:
            return 1

        ids = [scheduler.submit_job(f"j{i}", run=quick, project="vision") for i in range(10)]
        for job_id in ids:  # they run to the end while the subscriber reads nothing
            assert (await scheduler.wait_job(job_id, timeout=20)).state.value == "COMPLETED"
        assert slow.body == b"" and len(emitted) > SIZE
        slow.reading.set()
        await slow.until(1 + 1 + SIZE)
        await asyncio.sleep(0.05)
        assert len(slow.events()) == 1 + 1 + SIZE  # nothing more: the rest was dropped
        assert slow.dropped() == len(emitted) - SIZE == scheduler.event_drops
        assert slow.jobs() == [e.job_id for e in emitted[:SIZE]]
        assert await _metrics(app) == len(emitted) - SIZE
        await slow.leave()


@pytest.mark.asyncio
async def test_a_subscriber_gets_and_loses_only_events_it_may_see() -> None:
    scheduler = JobScheduler("fifo", journal=None)
    app = create_app(scheduler, tokens=TOKENS, event_queue_size=SIZE, manage_scheduler=False)
    ann = await Subscriber(app, ANN, reading=False).connect()  # vision
    bob = await Subscriber(app, BOB).connect()  # nlp
    admin = await Subscriber(app, ADMIN).connect()
    await bob.until(1)
    await admin.until(1)
    theirs = []
    for i in range(3 * SIZE):  # a flood of others' jobs (and of one no user's project)
        theirs.append(scheduler.submit_job(f"nlp{i}", project="nlp" if i % 3 else None))
        await asyncio.sleep(0)
    ann_jobs = [scheduler.submit_job(f"vision{i}", project="vision") for i in range(SIZE)]
    ann.reading.set()
    await ann.until(1 + SIZE)
    await asyncio.sleep(0.05)
    # Others' events neither reach ann nor take her queue's room, nor show in her drop count.
    assert ann.jobs() == ann_jobs and ann.dropped() == 0
    await admin.until(1 + len(theirs) + SIZE)
    nlp = [j for i, j in enumerate(theirs) if i % 3]
    assert bob.jobs() == nlp and bob.dropped() == 0
    assert admin.jobs() == theirs + ann_jobs
    assert scheduler.event_drops == 0 and await _metrics(app) == 0
    for s in (ann, bob, admin):
        assert all(e["type"] != "dropped" for e in s.events())
        await s.leave()


@pytest.mark.asyncio
async def test_one_jobs_stream_is_that_job_only_and_hidden_jobs_are_404() -> None:
    scheduler = JobScheduler("fifo", journal=None)
    app = create_app(scheduler, tokens=TOKENS, event_queue_size=SIZE, manage_scheduler=False)
    mine = scheduler.submit_job("mine", project="vision")
    other = scheduler.submit_job("other", project="nlp")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.get("/api/v1/events", params={"job_id": other}, headers={"Authorization": f"Bearer {ANN}"})
        assert r.status_code == 404
    one = await Subscriber(app, ANN, query=f"job_id={mine}".encode()).connect()
    await one.until(1)
    scheduler.cancel_job(other)
    scheduler.cancel_job(mine)
    await one.until(2)
    await asyncio.sleep(0.05)
    assert one.jobs() == [mine]
    await one.leave()


@pytest.mark.asyncio
async def test_a_failing_filter_delivers_nothing_and_never_breaks_the_scheduler(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = JobScheduler("fifo", journal=None)
    seen: list[int] = []
    scheduler.on_event(lambda ev: seen.append(ev.job_id))

    def broken(_ev: Any) -> bool:
        raise RuntimeError("filter bug")

    sub = scheduler.events(maxsize=SIZE, accept=broken)
    picky = scheduler.events(maxsize=SIZE, accept=lambda ev: ev.job_id % 2 == 0)
    ids = [scheduler.submit_job(f"j{i}") for i in range(3 * SIZE)]  # each submit still returns its id
    assert seen == ids  # the other listeners had every event
    assert sub.drain() == [] and sub.dropped == 0  # fail closed: nothing delivered, nothing counted
    assert [e.job_id for e in picky.drain()] == [j for j in ids if j % 2 == 0][:SIZE]
    assert picky.dropped == len([j for j in ids if j % 2 == 0]) - SIZE == scheduler.event_drops
    assert "event filter" in caplog.text and "filter bug" in caplog.text
    sub.close()
    picky.close()


@pytest.mark.parametrize("size", [0, -1])
def test_an_event_queue_is_always_bounded(size: int) -> None:
    # asyncio.Queue(0) is unbounded: a slow subscriber would grow without limit.
    with pytest.raises(ValueError, match=f"event_queue_size must be an int >= 1, got {size}"):
        JobScheduler("fifo", journal=None, event_queue_size=size)
    scheduler = JobScheduler("fifo", journal=None)
    with pytest.raises(ValueError, match=f"maxsize must be an int >= 1, got {size}"):
        scheduler.events(maxsize=size)
    with pytest.raises(TypeError, match="maxsize"):
        scheduler.events(maxsize=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_queue_size"):
        create_app(scheduler, tokens=TOKENS, event_queue_size=size)


def test_serve_passes_event_queue_size_to_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    import uvicorn

    from plugin_scheduling import _cli_serve, server

    made: dict[str, Any] = {}
    real = server.create_app

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(server, "create_app", spy)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    parser = argparse.ArgumentParser()
    _cli_serve.add_parser(parser.add_subparsers(dest="command"))
    tokens = write_tokens(tmp_path / "tokens.json", TOKENS)
    args = parser.parse_args(["serve", "--tokens", str(tokens), "--journal", str(tmp_path / "jobs.db"), "--event-queue-size", "7"])
    assert _cli_serve.run(args) == 0
    assert made["event_queue_size"] == 7
    assert parser.parse_args(["serve"]).event_queue_size == 256


@pytest.mark.parametrize("bad", [{"event_queue_size": 0}, {"log_limit_bytes": 10}])
def test_a_bad_argument_leaves_the_journal_free(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))) as caught:
        JobScheduler("fifo", journal=tmp_path / "jobs.db", **bad)
    # Even while the failed one is still referenced (by the traceback), the journal is not held.
    again = JobScheduler("fifo", journal=tmp_path / "jobs.db")
    assert again.job_counts() is not None and caught.value is not None
    again.close()


@pytest.mark.asyncio
async def test_the_event_filter_remembers_a_bounded_number_of_projects(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long-running server sees jobs without end: the filter's job -> project
    # memory is bounded, and an evicted job is looked up again, never shown to
    # the wrong user.
    from plugin_scheduling.server import _app

    monkeypatch.setattr(_app, "PROJECT_CACHE_SIZE", 3)
    scheduler = JobScheduler("fifo", journal=None)
    app = create_app(scheduler, tokens=TOKENS, event_queue_size=1000, manage_scheduler=False)
    ann = await Subscriber(app, ANN).connect()  # vision
    bob = await Subscriber(app, BOB).connect()  # nlp
    await ann.until(1)
    await bob.until(1)
    ids = [scheduler.submit_job(f"j{i}", project="vision" if i % 2 else "nlp") for i in range(40)]
    for job_id in ids:  # every job's events again, long after its entry was evicted
        scheduler.cancel_job(job_id)
    await ann.until(1 + 40)
    await bob.until(1 + 40)
    vision = [j for i, j in enumerate(ids) if i % 2]
    nlp = [j for i, j in enumerate(ids) if not i % 2]
    assert sorted(set(ann.jobs())) == vision and sorted(set(bob.jobs())) == nlp
    await ann.leave()
    await bob.leave()
