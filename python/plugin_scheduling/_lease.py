"""Leases: reservations released on exit, error or cancellation.

``with scheduler.lease(meta, provider) as grant:`` cannot leak a reservation the
way a forgotten ``on_execution_finish`` can.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from html import escape
from typing import Any, AsyncIterator, Iterator


@contextmanager
def lease(self: Any, plugin_meta: Any, stats_provider: Any, **job: Any) -> Iterator[Any]:
    """Reserve (blocking), yield the ``Grant``, release on exit. Raises
    ``ReservationTimeout`` after ``timeout`` or when the need can never fit.
    Keywords (priority, user, project, deadline_s, estimated_duration_s)
    override ``manifest["scheduling"]``."""
    grant = self._reserve(plugin_meta, stats_provider, lease=True, **job)
    self._start_grant(grant.id)
    try:
        yield grant
    finally:
        self._release_grant(grant.id)


@asynccontextmanager
async def lease_async(self: Any, plugin_meta: Any, stats_provider: Any, **job: Any) -> AsyncIterator[Any]:
    """Reserve (awaiting), yield the ``Grant``, release on exit or cancellation."""
    grant = await self._reserve_async(plugin_meta, stats_provider, lease=True, **job)
    self._start_grant(grant.id)
    try:
        yield grant
    finally:
        self._release_grant(grant.id)


def repr_html(self: Any) -> str:
    """Jupyter view: grants and waiters as two small tables."""
    snap = self.snapshot()
    rows = "".join(
        f"<tr><td>{g['id']}</td><td>{escape(g['plugin'])}</td><td>{g['devices']}</td>"
        f"<td>{g['vram_mb']:,.0f}</td><td>{g['ram_mb']:,.0f}</td><td>{'yes' if g['started'] else 'no'}</td></tr>"
        for g in snap["grants"]
    )
    waiting = "".join(
        f"<tr><td>{w['position']}</td><td>{escape(w['plugin'])}</td><td>{w['gpu_count']}</td>"
        f"<td>{w['vram_mb']:,.0f}</td><td>{w['ram_mb']:,.0f}</td><td>{w['waiting_s']:.1f}</td></tr>"
        for w in snap["waiters"]
    )
    return (
        f"<div><b>{escape(repr(self))}</b>"
        "<table><tr><th>grant</th><th>plugin</th><th>GPUs</th><th>VRAM MB</th><th>RAM MB</th><th>started</th></tr>"
        f"{rows}</table>"
        "<table><tr><th>#</th><th>waiting</th><th>GPUs</th><th>VRAM MB</th><th>RAM MB</th><th>for s</th></tr>"
        f"{waiting}</table></div>"
    )
