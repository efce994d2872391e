"""The ASGI app: routes, auth, errors, limits, events."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..jobs import Command, InvalidTransition, JournalError, ResourceRequirements, UnknownJob
from ._auth import Identity, TokenStore, load_tokens
from ._metrics import Metrics
from ._models import (
    ErrorBody,
    GpuView,
    JobId,
    ProjectId,
    JobLogs,
    JobStateName,
    JobSubmit,
    JobView,
    PriorityPatch,
    QueueStats,
    QuotaPatch,
    QuotaView,
    SchedulerInfo,
    TriggerRequest,
    TriggerResult,
    WhoAmI,
)
from ._state import SchedulerView, Snapshot, iso

logger = logging.getLogger("plugin_scheduling.server")

COOKIE = "plugin_scheduling_token"
# Jobs whose project the event filter remembers (least recently used out).
PROJECT_CACHE_SIZE = 65_536
#: Header a cookie-authenticated (browser) request must carry to change
#: anything: a cross-site form cannot set it (CSRF).
CSRF_HEADER = "x-plugin-scheduling"
_FROM_SCHEDULER: Any = object()
_STATIC = Path(__file__).with_name("static")
#: The page loads only its own assets and talks only to this server.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "field"}}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})


def _error(status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status, headers=dict(headers or {}))


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown token"},
    404: {"model": ErrorBody, "description": "no such job (or not one of your projects')"},
    413: {"model": ErrorBody, "description": "request body over the server's limit"},
    422: {"model": ErrorBody, "description": "bad input (field named)"},
}


class BodyLimit:
    """Answers 413 to a request body over ``limit`` bytes (declared or sent)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    await self._refuse(scope, receive, send)
                    return
        # Read the body (at most limit bytes) before the app sees it, then
        # replay it: a body that turns out too large is refused whole.
        messages: list[Message] = []
        seen = 0
        more = scope.get("method") in ("POST", "PUT", "PATCH", "DELETE")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(scope, receive, send)
                return
            messages.append(message)
            more = bool(message.get("more_body", False))

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, "body_too_large", f"request body larger than {self.limit} bytes", "body")
        await response(scope, receive, send)


class _GroupCommit:
    """Makes a request's journal writes durable before it is answered, one
    commit for all the requests handled in the same loop turn (a commit
    per request would serialize the loop on the disk)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.pending: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        if self.pending is None:
            self.pending = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit)
        await asyncio.shield(self.pending)

    def _commit(self) -> None:
        future, self.pending = self.pending, None
        assert future is not None
        try:
            self.scheduler.flush()
        except Exception as e:  # JournalError: every waiter gets it
            future.set_exception(e)
        else:
            future.set_result(None)


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def create_app(
    scheduler: Any,
    tokens: TokenStore | Mapping[str, Any] | str | os.PathLike[str],
    *,
    quotas: Any = _FROM_SCHEDULER,
    max_body_bytes: int = 1 << 20,
    public_metrics: bool = False,
    manage_scheduler: bool = True,
    event_queue_size: int = 256,
) -> FastAPI:
    """The service's ASGI app for ``scheduler`` (a ``JobScheduler``).

    ``tokens``: a ``TokenStore``, a mapping ``{token: {"user", "projects",
    "admin"}}`` or the path of a tokens file (mode 0600). ``quotas``: the
    quota provider for the quota routes (default: the scheduler's). A
    Command job's output is the one the scheduler keeps
    (``JobScheduler.job_logs``: beside its journal, bounded by its
    ``log_limit_bytes``). ``manage_scheduler``: start
    the scheduler on startup and stop it on shutdown (the app's lifespan; a
    host app that mounts this one runs its own lifespan, so it starts and
    stops the scheduler itself)."""
    if isinstance(tokens, TokenStore):
        store = tokens
    elif isinstance(tokens, Mapping):
        store = TokenStore(tokens)
    elif isinstance(tokens, (str, os.PathLike)):
        store = load_tokens(tokens)
    else:
        raise TypeError(f"tokens must be a TokenStore, a mapping or a tokens file path, got {tokens!r}")
    for name, value in (("max_body_bytes", max_body_bytes), ("event_queue_size", event_queue_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if quotas is _FROM_SCHEDULER:
        quotas = getattr(scheduler, "quotas", None)
    view = SchedulerView(scheduler)
    # The streams' drops are the scheduler's (``event_drops`` counts every
    # subscription's): counting them here as well counted each one twice.
    metrics = Metrics(view)
    # job id -> project, for filtering events without a lookup per event;
    # bounded (least recently used out): a long-running server's finished jobs
    # leave with retention, and an evicted entry is just read again.
    project_cache: "collections.OrderedDict[int, str | None]" = collections.OrderedDict()
    commit = _GroupCommit(scheduler)

    def on_event(event: Any) -> None:
        if event.type != "state":
            return
        if event.previous is None and event.state == "QUEUED":
            try:
                metrics.submits.labels(project=view.raw(event.job_id)["project"] or "").inc()
            except (UnknownJob, KeyError):
                pass
        elif event.previous == "QUEUED" and event.state == "RUNNING":
            try:
                d = view.raw(event.job_id)
                if d["started"] is not None:
                    metrics.wait.observe(max(float(d["started"]) - float(d["submitted"]), 0.0))
            except (UnknownJob, KeyError):
                pass

    unsubscribe = scheduler.on_event(on_event)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_scheduler:
            await scheduler.start()
        try:
            yield
        finally:
            if manage_scheduler:
                await scheduler.stop()

    app = FastAPI(
        title="plugin-scheduling",
        version=_version(),
        description="Jobs, queues and quotas of a plugin_scheduling JobScheduler. Auth: `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        responses=_ERRORS,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.scheduler = scheduler
    app.state.tokens = store
    app.state.unsubscribe = unsubscribe
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    # ---------------------------------------------------------------- errors

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        message = "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg')}" for e in errors[:10])
        return _error(422, "invalid", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is not JSON (or not UTF-8): bad input
            return _error(422, "invalid", f"the request body cannot be parsed: {exc.detail}", "body")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            methods: set[str] = set()
            for route in app.routes:
                regex = getattr(route, "path_regex", None)
                route_methods = getattr(route, "methods", None)
                if regex is not None and regex.match(_request.url.path) and route_methods:
                    methods |= set(route_methods)
            headers["Allow"] = ", ".join(sorted(methods))
        return _error(exc.status_code, code, str(exc.detail), None, headers)

    @app.exception_handler(JournalError)
    async def _journal(request: Request, exc: JournalError) -> JSONResponse:
        logger.error("%s %s: the journal cannot be written: %s", request.method, request.url.path, exc)
        return _error(503, "journal_unavailable", f"the job journal cannot be written now: {exc}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal", f"internal error ({type(exc).__name__}); the server's log has the details")

    # ------------------------------------------------------------------ auth

    async def identity(request: Request) -> Identity:
        header = request.headers.get("authorization")
        token: str | None = None
        via_cookie = False
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'", "Authorization", {"WWW-Authenticate": "Bearer"})
            token = value.strip()
        else:
            token = request.cookies.get(COOKIE)
            via_cookie = token is not None
        ident = store.identify(token)
        if ident is None:
            what = "missing token" if not token else "unknown token"
            raise ApiError(401, "unauthorized", f"{what}: send Authorization: Bearer <token>", "Authorization", {"WWW-Authenticate": "Bearer"})
        if via_cookie and request.method not in ("GET", "HEAD", "OPTIONS") and request.headers.get(CSRF_HEADER) != "1":
            raise ApiError(403, "csrf", f"a cookie-authenticated request that changes state must send the header {CSRF_HEADER}: 1", CSRF_HEADER)
        return ident

    async def admin(ident: Identity = Depends(identity)) -> Identity:
        if not ident.admin:
            raise ApiError(403, "forbidden", f"user {ident.user!r} is not an admin: this route is admin-only")
        return ident

    async def metrics_identity(request: Request) -> Identity | None:
        if public_metrics:
            return None
        return await identity(request)

    def visible(ident: Identity, job_id: int) -> dict[str, Any]:
        try:
            d = view.raw(job_id)
        except (UnknownJob, KeyError):
            d = None
        if d is None or not ident.may_see(d["project"]):
            raise ApiError(404, "not_found", f"no job {job_id}", "job_id")
        return d

    def check_project(ident: Identity, project_id: str) -> None:
        if not ident.may_see(project_id):
            raise ApiError(404, "not_found", f"no project {project_id!r} among yours", "project_id")

    # ------------------------------------------------------------ seed 004

    @app.get("/api/v1/jobs/scheduler/info", response_model=SchedulerInfo, tags=["seed 004"])
    async def scheduler_info(ident: Identity = Depends(identity)) -> dict[str, Any]:
        info = scheduler.get_scheduler_info()
        return {k: info[k] for k in ("policy", "quota_provider", "active_queues", "pending_jobs")}

    @app.post("/api/v1/jobs/scheduler/trigger", response_model=TriggerResult, tags=["seed 004"])
    async def trigger(body: TriggerRequest | None = None, ident: Identity = Depends(identity)) -> dict[str, Any]:
        project_id = None if body is None else body.project_id
        if project_id is not None:
            check_project(ident, project_id)
        result = await scheduler.trigger_async(project_id)
        return {"scheduled_count": int(result["scheduled_count"]), "remaining_pending": int(result["remaining_pending"])}

    @app.get("/api/v1/queues", response_model=list[QueueStats], tags=["seed 004"])
    async def queues(project_id: ProjectId | None = None, ident: Identity = Depends(identity)) -> list[dict[str, Any]]:
        if project_id is not None:
            check_project(ident, project_id)
        stats = scheduler.get_queue_stats()
        if project_id is None and ident.admin:
            rows = stats
        else:
            mine = {project_id} if project_id is not None else set(ident.projects)
            counts: dict[str, dict[str, int]] = {q["name"]: {"running_jobs": 0, "pending_jobs": 0, "total_jobs": 0} for q in stats}
            for d in view.records():
                if d["project"] not in mine or d["queue"] not in counts:
                    continue
                c = counts[d["queue"]]
                c["total_jobs"] += 1
                if d["state"] == "RUNNING":
                    c["running_jobs"] += 1
                elif d["state"] == "QUEUED":
                    c["pending_jobs"] += 1
            rows = [{**q, **counts[q["name"]]} for q in stats]
        return [
            {"id": q["name"], "name": q["name"], "priority": q["priority"], "max_concurrent_jobs": q["max_concurrent_jobs"],
             "running_jobs": q["running_jobs"], "pending_jobs": q["pending_jobs"], "total_jobs": q["total_jobs"]}
            for q in rows
        ]

    def provider() -> Any:
        if quotas is None:
            raise ApiError(404, "no_quota_provider", "this server has no quota provider (serve --quotas ...)", None)
        return quotas

    async def quota_view(project_id: str) -> dict[str, Any]:
        from ..quotas import InvalidQuota

        try:
            info = await asyncio.to_thread(provider().get_quota, project_id)
        except InvalidQuota as e:
            raise ApiError(422, "invalid", str(e), "project_id") from None
        if info is None:
            raise ApiError(404, "not_found", f"no quota set for project {project_id!r}", "project_id")
        return dict(info.to_dict())

    @app.get("/api/v1/queues/quota/{project_id}", response_model=QuotaView, tags=["seed 004"])
    async def get_quota(project_id: ProjectId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        check_project(ident, project_id)
        return await quota_view(project_id)

    @app.patch("/api/v1/queues/quota/{project_id}", response_model=QuotaView, tags=["seed 004"], responses={403: {"model": ErrorBody}})
    async def patch_quota(project_id: ProjectId, body: QuotaPatch, ident: Identity = Depends(admin)) -> dict[str, Any]:
        from ..quotas import InvalidQuota

        fields = body.model_dump(exclude_unset=True)
        try:
            info = await asyncio.to_thread(lambda: provider().set_quota(project_id, **fields))
        except (InvalidQuota, ValueError, TypeError) as e:
            raise ApiError(422, "invalid", str(e), _quota_field(str(e), fields)) from None
        except NotImplementedError as e:
            raise ApiError(405, "not_supported", str(e)) from None
        return dict(info.to_dict())

    @app.post("/api/v1/queues/quota/{project_id}/sync", response_model=QuotaView, tags=["seed 004"])
    async def sync_quota(project_id: ProjectId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        check_project(ident, project_id)
        return await quota_view(project_id)  # a fresh read from the provider's backend

    # ---------------------------------------------------------------- jobs

    @app.get("/api/v1/whoami", response_model=WhoAmI, tags=["auth"])
    async def whoami(ident: Identity = Depends(identity)) -> dict[str, Any]:
        return ident.to_dict()

    @app.post("/api/v1/jobs", status_code=201, response_model=JobView, tags=["jobs"], responses={403: {"model": ErrorBody}})
    async def submit(body: JobSubmit, ident: Identity = Depends(identity)) -> dict[str, Any]:
        project = body.project
        if project is None:
            if len(ident.projects) == 1:
                project = next(iter(ident.projects))
            elif not ident.admin:
                raise ApiError(422, "invalid", f"project is required: one of {sorted(ident.projects)}", "project")
        elif not ident.may_see(project):
            raise ApiError(403, "forbidden", f"user {ident.user!r} is not a member of project {project!r}", "project")
        argv = list(body.command)
        try:
            command = Command(argv, env=body.env, cwd=body.cwd)
            r = body.requirements
            job_id = scheduler.submit_job(
                body.name,
                priority=body.priority,
                deadline=body.deadline,
                requirements=ResourceRequirements(r.cpu_cores, r.memory_mb, r.gpu_count, r.vram_mb),
                estimated_duration=body.estimated_duration,
                user=ident.user,
                project=project,
                queue=body.queue,
                run=command,
            )
        except (ValueError, TypeError) as e:
            raise ApiError(422, "invalid", str(e), _submit_field(str(e))) from None
        remember_project(job_id, project)
        view_ = Snapshot(view).job_view(view.raw(job_id))
        await commit.wait()  # a 201 is a job in the journal, whatever the scheduler's batching
        return view_

    @app.get("/api/v1/jobs", response_model=list[JobView], tags=["jobs"])
    async def list_jobs(
        state: JobStateName | None = None,
        project_id: ProjectId | None = None,
        user: str | None = Query(None, max_length=128),
        limit: int = Query(1000, ge=1, le=10000),
        ident: Identity = Depends(identity),
    ) -> list[dict[str, Any]]:
        snap = Snapshot(view)
        if state in (None, "QUEUED"):
            snap.starts()  # one plan for the whole list
        out = []
        for d in view.records(state):
            if not ident.may_see(d["project"]):
                continue
            if project_id is not None and d["project"] != project_id:
                continue
            if user is not None and d["user"] != user:
                continue
            out.append(snap.job_view(d))
        if state == "QUEUED" or state is None:
            out.sort(key=lambda j: (j["position"] is None, j["position"] or 0, j["id"]))
        return out[-limit:] if state != "QUEUED" else out[:limit]

    @app.get("/api/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    async def get_job(job_id: JobId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        return Snapshot(view).job_view(visible(ident, job_id))

    async def act(job_id: JobId, ident: Identity, action: Callable[[int], Any]) -> dict[str, Any]:
        visible(ident, job_id)
        try:
            action(job_id)
        except InvalidTransition as e:
            raise ApiError(409, "invalid_transition", str(e), "state") from None
        await commit.wait()
        return Snapshot(view).job_view(view.raw(job_id))

    conflict: dict[int | str, dict[str, Any]] = {409: {"model": ErrorBody, "description": "the job's state does not allow it"}}

    @app.post("/api/v1/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"], responses=conflict)
    async def cancel(job_id: JobId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        return await act(job_id, ident, lambda j: scheduler.cancel_job(j, f"cancelled by {ident.user} (HTTP)"))

    @app.post("/api/v1/jobs/{job_id}/pause", response_model=JobView, tags=["jobs"], responses=conflict)
    async def pause(job_id: JobId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        return await act(job_id, ident, scheduler.pause_job)

    @app.post("/api/v1/jobs/{job_id}/resume", response_model=JobView, tags=["jobs"], responses=conflict)
    async def resume(job_id: JobId, ident: Identity = Depends(identity)) -> dict[str, Any]:
        return await act(job_id, ident, scheduler.resume_job)

    @app.patch("/api/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=conflict)
    async def patch_job(job_id: JobId, body: PriorityPatch, ident: Identity = Depends(identity)) -> dict[str, Any]:
        def set_priority(j: int) -> None:
            try:
                scheduler.set_priority(j, body.priority)
            except ValueError as e:
                raise ApiError(422, "invalid", str(e), "priority") from None

        return await act(job_id, ident, set_priority)

    @app.get("/api/v1/jobs/{job_id}/logs", response_model=JobLogs, tags=["jobs"])
    async def job_logs(job_id: JobId, tail: int = Query(100, ge=1, le=100_000), ident: Identity = Depends(identity)) -> dict[str, Any]:
        visible(ident, job_id)
        kept = scheduler.job_logs(job_id, tail)
        if kept is None:
            raise ApiError(404, "no_logs", f"job {job_id} has no captured output (only Command jobs of a scheduler with a journal have)", "job_id")
        return {"job_id": job_id, "tail": tail, "stdout": kept["stdout"], "stderr": kept["stderr"], "truncated": kept["truncated"]}

    # -------------------------------------------------------------- live

    last_encoded: list[Any] = [None, ""]

    def encoded(ev: Any) -> str:
        """An event's JSON, made once for all the streams it goes to."""
        if last_encoded[0] is not ev:
            last_encoded[0], last_encoded[1] = ev, json.dumps(_event_json(ev, view))
        return str(last_encoded[1])

    def remember_project(job_id: int, project: str | None) -> None:
        project_cache[job_id] = project
        project_cache.move_to_end(job_id)
        while len(project_cache) > PROJECT_CACHE_SIZE:
            project_cache.popitem(last=False)

    def project_of(job_id: int) -> str | None:
        if job_id in project_cache:
            project_cache.move_to_end(job_id)
            return project_cache[job_id]
        try:
            project: str | None = view.raw(job_id)["project"]
        except (UnknownJob, KeyError):
            return None
        remember_project(job_id, project)
        return project

    @app.get("/api/v1/events", tags=["live"], responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
    async def events(request: Request, job_id: JobId | None = None, ident: Identity = Depends(identity)) -> EventSourceResponse:
        if job_id is not None:
            visible(ident, job_id)
        # Filtered as the event happens, before the queue: another user's
        # events neither reach this stream nor take its room (a flood of them
        # would push out this user's own) nor show in its drop count.
        sub = scheduler.events(job_id=job_id, maxsize=event_queue_size, accept=lambda ev: ident.may_see(project_of(ev.job_id)))

        async def stream() -> AsyncIterator[dict[str, str]]:
            reported = 0
            try:
                yield {"event": "ready", "data": json.dumps({"type": "ready", "job_id": None, "user": ident.user})}
                async for ev in sub:
                    if sub.dropped > reported:  # cumulative: all this stream has lost so far
                        reported = sub.dropped
                        yield {"data": json.dumps({"type": "dropped", "job_id": None, "count": reported})}
                    yield {"data": encoded(ev)}
            finally:
                sub.close()

        return EventSourceResponse(stream(), ping=15)

    @app.get("/api/v1/gpus", response_model=list[GpuView], tags=["machine"])
    async def gpus(ident: Identity = Depends(identity)) -> list[dict[str, Any]]:
        snap = scheduler.reservations.snapshot()
        reserved = {int(k): float(v) for k, v in (snap.get("reserved_vram_mb") or {}).items()}
        mine = {d["module"] for d in view.records("RUNNING") + view.records("PAUSED") if ident.may_see(d["project"])}
        waiters: dict[int, int] = {}
        for w in snap.get("waiters") or []:
            for dev in w.get("devices") or []:
                waiters[int(dev)] = waiters.get(int(dev), 0) + 1
        out: list[dict[str, Any]] = []
        devices = (view.last_stats().get("details") or {}).get("gpus") or []
        for g in devices:
            idx = int(g.get("index", len(out)))
            grants = [
                {"job": gr["plugin"] if (ident.admin or gr["plugin"] in mine) else None, "vram_mb": float(gr.get("vram_mb") or 0.0), "started": bool(gr.get("started"))}
                for gr in snap.get("grants") or []
                if idx in (gr.get("devices") or [])
            ]
            out.append({
                "index": idx,
                "name": g.get("name"),
                "capacity_mb": g.get("memory_total_mb"),
                "used_mb": g.get("memory_used_mb"),
                "free_mb": g.get("memory_free_mb"),
                "reserved_mb": reserved.get(idx, 0.0),
                "utilization_percent": g.get("utilization_gpu_percent"),
                "grants": grants,
                "waiters": waiters.get(idx, 0),
            })
        return out

    @app.get("/metrics", tags=["machine"], response_class=PlainTextResponse)
    async def prometheus(_ident: Identity | None = Depends(metrics_identity)) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_ident: Identity | None = Depends(metrics_identity)) -> JSONResponse:
        return JSONResponse(app.openapi())

    # ------------------------------------------------------------ dashboard

    @app.get("/", include_in_schema=False, response_model=None)
    async def dashboard(request: Request, token: str | None = None) -> Response:
        if token is not None:
            if store.identify(token) is None:
                return HTMLResponse(_page("sign-in.html"), status_code=401, headers=_PAGE_HEADERS)
            response = RedirectResponse("./", status_code=303)
            root = request.scope.get("root_path", "") or ""
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=(root.rstrip("/") + "/"), secure=request.url.scheme == "https")
            return response
        header = request.headers.get("authorization", "")
        tok = header.partition(" ")[2].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if store.identify(tok) is None:
            return HTMLResponse(_page("sign-in.html"), status_code=401, headers=_PAGE_HEADERS)
        return HTMLResponse(_page("dashboard.html"), headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {".js": "text/javascript", ".css": "text/css"}
        path = _STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in types or not path.is_file():
            raise ApiError(404, "not_found", f"no static file {name!r}", "name")
        return Response(path.read_bytes(), media_type=types[path.suffix], headers={"Cache-Control": "no-cache"})

    return app


def _page(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:
        return "0"


def _event_json(ev: Any, view: SchedulerView) -> dict[str, Any]:
    return {
        "type": ev.type,
        "job_id": ev.job_id,
        "state": ev.state,
        "previous": ev.previous,
        "reason": ev.reason,
        "progress": ev.progress,
        "at": iso(view.now_unix() - view.now() + ev.at) if ev.at else None,
    }


def _submit_field(message: str) -> str:
    low = message.lower()
    for key in ("queue", "priority", "deadline", "cwd", "env"):
        if low.startswith(key) or f" {key}" in low[:40]:
            return key
    if "quota" in low or "fit" in low or "requirements" in low or "cpu" in low or "gpu" in low or "memory" in low:
        return "requirements"
    return "body"


def _quota_field(message: str, fields: Mapping[str, Any]) -> str | None:
    for key in fields:
        if key in message:
            return key
    return None
