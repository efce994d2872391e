"""The service under load, on loopback: CLIENTS concurrent API clients each
submit SUBMITS jobs (``["true"]``) and poll each until it ends, while SSE
subscribers watch the stream. Prints submits/s, submit and poll latency
(p50/p99), SSE fan-out (the time until every subscriber has seen a job's
submission, p50/p99), the server's peak RSS, and checks that nothing was lost:
every 201 is a job that ran to COMPLETED.

Run: python benches/bench_server.py [--clients 200] [--submits 5] [--subscribers 100]
(needs `pip install '.[test]'`). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_proc import ADMIN, ANN, ServerProc  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * p), len(xs) - 1)] if xs else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--submits", type=int, default=5)
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--hold", action="store_true", help="jobs never start (the API alone, no process spawning): poll once each")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    srv = ServerProc(tmp, extra=["--cpu-cores", "0.5" if args.hold else "64"]).start()
    try:
        await run(args, srv)
    finally:
        srv.stop()


async def run(args: argparse.Namespace, srv: ServerProc) -> None:
    assert srv.proc is not None
    proc = psutil.Process(srv.proc.pid)
    peak_rss = [proc.memory_info().rss]
    seen_at: dict[int, list[float]] = {}
    ready = 0

    async def subscriber() -> None:
        nonlocal ready
        async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=None) as c:
            async with c.stream("GET", "/api/v1/events") as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    ev = json.loads(line[5:])
                    if ev["type"] == "ready":
                        ready += 1
                    elif ev["type"] == "state" and ev["previous"] is None:
                        seen_at.setdefault(ev["job_id"], []).append(time.perf_counter())

    subs = [asyncio.create_task(subscriber()) for _ in range(args.subscribers)]
    while ready < args.subscribers:
        await asyncio.sleep(0.05)

    submit_lat: list[float] = []
    poll_lat: list[float] = []
    submitted_at: dict[int, float] = {}
    accepted: list[int] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def rss_watch() -> None:
        while True:
            peak_rss.append(proc.memory_info().rss)
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {ANN}"}, timeout=120, limits=limits) as c:

        async def client() -> None:
            mine = []
            for _ in range(args.submits):
                t0 = time.perf_counter()
                r = await c.post("/api/v1/jobs", json={"command": ["true"], "name": "bench"})
                submit_lat.append(time.perf_counter() - t0)
                if r.status_code == 201:
                    jid = r.json()["id"]
                    submitted_at[jid] = t0
                    accepted.append(jid)
                    mine.append(jid)
            for jid in mine:
                while True:
                    t0 = time.perf_counter()
                    state = (await c.get(f"/api/v1/jobs/{jid}")).json()["state"]
                    poll_lat.append(time.perf_counter() - t0)
                    if state in ("COMPLETED", "FAILED", "CANCELLED") or args.hold:
                        break
                    await asyncio.sleep(0.2)

        watcher = asyncio.create_task(rss_watch())
        t_start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - t_start
        watcher.cancel()
        submit_phase = max(submitted_at.values()) - t_start if submitted_at else float("nan")
        final = {j["id"]: j["state"] for j in (await c.get("/api/v1/jobs", params={"limit": 10000})).json()}
    await asyncio.sleep(0.5)
    for t in subs:
        t.cancel()
    fanout = [max(ts) - submitted_at[j] for j, ts in seen_at.items() if j in submitted_at and len(ts) == args.subscribers]
    incomplete = sum(1 for j in accepted if len(seen_at.get(j, [])) < args.subscribers)
    lost = [j for j in accepted if final.get(j) != ("QUEUED" if args.hold else "COMPLETED")]
    print(f"# {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"clients {args.clients} x {args.submits} submits, {args.subscribers} SSE subscribers")
    print(f"accepted (201): {len(accepted)} of {args.clients * args.submits}; not {'QUEUED' if args.hold else 'COMPLETED'}: {len(lost)}")
    print(f"submits/s (submission phase): {len(accepted) / submit_phase:.0f}   total run {elapsed:.1f} s")
    print(f"submit latency  p50 {pct(submit_lat, .5) * 1e3:.1f} ms  p99 {pct(submit_lat, .99) * 1e3:.1f} ms")
    print(f"poll latency    p50 {pct(poll_lat, .5) * 1e3:.1f} ms  p99 {pct(poll_lat, .99) * 1e3:.1f} ms  ({len(poll_lat)} polls)")
    print(f"SSE fan-out to all {args.subscribers}: p50 {pct(fanout, .5) * 1e3:.1f} ms  p99 {pct(fanout, .99) * 1e3:.1f} ms; jobs some subscriber missed: {incomplete}")
    print(f"server peak RSS {max(peak_rss) / 2**20:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
