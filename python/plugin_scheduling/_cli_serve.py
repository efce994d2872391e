"""``python -m plugin_scheduling serve``: the service (``plugin_scheduling.server``) with uvicorn."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from typing import Any

from ._cli_sim import _positive_int


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="the REST API, events and dashboard over a job scheduler (needs the [server] extra)",
        description="Serves a JobScheduler over HTTP: REST API, server-sent events, Prometheus metrics and a dashboard.",
        epilog=(
            "examples:\n  %(prog)s\n  %(prog)s --port 9000 --journal ./jobs.db --policy priority\n"
            "  %(prog)s --tokens ./tokens.json --quotas sqlite:./quotas.db"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this host only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--journal", metavar="PATH", help="job journal (default $XDG_STATE_HOME/plugin-scheduling/jobs.db)")
    serve.add_argument("--policy", metavar="NAME", help="scheduling policy (default $SCHEDULING_POLICY or fifo)")
    serve.add_argument("--quotas", metavar="URL", help="quota provider: sqlite:PATH or postgresql://...")
    serve.add_argument("--tokens", metavar="FILE", help="tokens file (JSON, mode 0600); default: created under $XDG_CONFIG_HOME/plugin-scheduling/")
    serve.add_argument("--public-metrics", action="store_true", help="serve /metrics and /openapi.json without a token")
    serve.add_argument("--cpu-cores", type=float, metavar="N", help="CPU cores the jobs may use (default: all)")
    serve.add_argument("--simulated-gpus", metavar="MB,MB", help="for demos and tests: simulated GPUs of these sizes instead of this machine's")
    serve.add_argument("--event-queue-size", type=_positive_int, default=256, metavar="N",
                       help="events kept for each /api/v1/events stream that reads slowly (default 256); beyond that a "
                            "stream's events are dropped, counted in /metrics and told to it as a 'dropped' event, "
                            "and the scheduler never waits for it")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                       help="server log level (default info)")


def _quotas(spec: str | None) -> Any:
    if spec is None:
        return None
    from .quotas import LocalQuotaProvider

    if spec.startswith(("postgresql://", "postgres://")):
        return LocalQuotaProvider(dsn=spec)
    if spec.startswith("sqlite:"):
        return LocalQuotaProvider(path=spec[len("sqlite:") :])
    raise ValueError(f"--quotas must be sqlite:PATH or postgresql://..., got {spec!r}")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from . import server
    except ImportError as e:
        print(f"error: serve needs the server extra (pip install 'plugin-scheduling[server]'): {e}", file=sys.stderr)
        return 2
    from .jobs import JobScheduler

    try:
        if args.tokens is None:
            path, created = server.create_token_file(server.default_tokens_path(), user=getpass.getuser())
            if created:
                print(f"created a tokens file with one admin token: {path} (read it with: cat {path})", file=sys.stderr)
            else:
                print(f"tokens: {path}", file=sys.stderr)
            tokens = server.load_tokens(path)
        else:
            tokens = server.load_tokens(args.tokens)
        kwargs: dict[str, Any] = {"priority_scale": "0-100", "quotas": _quotas(args.quotas)}
        if args.journal is not None:
            kwargs["journal"] = args.journal
        if args.cpu_cores is not None:
            kwargs["cpu_cores"] = args.cpu_cores
        if args.simulated_gpus:
            from ._core import SimulatedSystem

            sizes = [float(x) for x in args.simulated_gpus.split(",") if x.strip()]
            kwargs["stats_provider"] = SimulatedSystem(gpus=sizes).snapshot_async
        scheduler = JobScheduler(args.policy, **kwargs)
        app = server.create_app(scheduler, tokens=tokens, public_metrics=args.public_metrics, event_queue_size=args.event_queue_size)
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            print(f"warning: binding {args.host}: reachable from other hosts (tokens travel in clear without TLS)", file=sys.stderr)
    except ValueError:
        pass
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on", access_log=False,
                            timeout_keep_alive=30)  # keep-alive longer than a client's pause between polls
    server_ = uvicorn.Server(config)
    server_.run()
    return 0
