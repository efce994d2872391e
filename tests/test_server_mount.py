"""``create_app`` mounted in a host Starlette app (as FastHTML apps are), in process."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from plugin_scheduling import SimulatedSystem
from plugin_scheduling.jobs import JobScheduler
from plugin_scheduling.server import TokenFileError, create_app, load_tokens

from server_proc import ANN, BOB, TOKENS, write_tokens

pytestmark = pytest.mark.timeout(60)


@pytest.mark.asyncio
async def test_mounted_under_a_prefix_with_the_hosts_lifespan(tmp_path: Path) -> None:
    scheduler = JobScheduler("fifo", journal=tmp_path / "jobs.db", cpu_cores=2, stats_provider=SimulatedSystem(gpus=[8192.0]).snapshot_async)
    api = create_app(scheduler, tokens=TOKENS, manage_scheduler=False)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with scheduler:  # a mounted app's lifespan does not run: the host starts the scheduler
            yield

    host = Starlette(routes=[Route("/", lambda r: PlainTextResponse("host")), Mount("/sched", app=api)], lifespan=lifespan)
    async with lifespan(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            assert (await c.get("/")).text == "host"
            h = {"Authorization": f"Bearer {ANN}"}
            r = await c.post("/sched/api/v1/jobs", json={"command": ["true"]}, headers=h)
            assert r.status_code == 201, r.text
            job = await scheduler.wait_job(r.json()["id"], timeout=20)
            assert job.state.value == "COMPLETED"
            assert (await c.get(f"/sched/api/v1/jobs/{job.job_id}", headers={"Authorization": f"Bearer {BOB}"})).status_code == 404
            r = await c.get("/sched/", params={"token": ANN})
            assert r.status_code == 303 and "Path=/sched/" in r.headers["set-cookie"]
            page = await c.get("/sched/", headers=h)
            assert page.status_code == 200 and 'src="static/dashboard.js"' in page.text  # relative: works under the prefix
            assert (await c.get("/sched/static/dashboard.js")).status_code == 200


def test_create_app_refuses_bad_arguments(tmp_path: Path) -> None:
    scheduler = JobScheduler("fifo", journal=None)
    with pytest.raises(TypeError, match="tokens"):
        create_app(scheduler, tokens=42)  # type: ignore[arg-type]
    with pytest.raises(TokenFileError, match="at least 16"):
        create_app(scheduler, tokens={"short": {"user": "a"}})
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(scheduler, tokens=TOKENS, max_body_bytes=0)
    path = write_tokens(tmp_path / "t.json", TOKENS, mode=0o640)
    with pytest.raises(TokenFileError, match="0640"):
        create_app(scheduler, tokens=path)
    with pytest.raises(TokenFileError, match="0640"):
        load_tokens(path)
