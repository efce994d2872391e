"""The service: a REST API, server-sent events, Prometheus metrics and a
dashboard over a ``JobScheduler`` (``pip install 'plugin-scheduling[server]'``).

``create_app(scheduler, tokens=...)`` returns an ASGI app (FastAPI) to serve
with uvicorn or mount in a Starlette/FastAPI/FastHTML app;
``python -m plugin_scheduling serve`` runs one. Contract: DESIGN "Service".

Logs: a ``Command`` submitted through the server runs as its argv (no
shell); its stdout/stderr are the ones the ``JobScheduler`` keeps for every
Command job (``JobScheduler.job_logs``: ``<journal>.logs/``, bounded by
``log_limit_bytes`` per stream, one rotated part kept, across restarts).
"""

from __future__ import annotations

from ._app import COOKIE, CSRF_HEADER, ApiError, create_app
from ._auth import Identity, TokenFileError, TokenStore, create_token_file, default_tokens_path, load_tokens

__all__ = [
    "ApiError",
    "COOKIE",
    "CSRF_HEADER",
    "Identity",
    "TokenFileError",
    "TokenStore",
    "create_app",
    "create_token_file",
    "default_tokens_path",
    "load_tokens",
]
