"""``python -m plugin_scheduling quota get|set|usage PROJECT``.

The provider comes from the environment as seed 004 configures it
(``QUOTA_PROVIDER``, ``SLURM_ACCOUNT_PREFIX``, ``QUOTA_DB_PATH``,
``QUOTA_DATABASE_URL``) unless ``--provider``/``--db``/``--dsn`` say otherwise.
Exit status: 0 done, 1 no quota for the project, 2 bad input, 3 backend failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

_CLEARABLE = {"cpu": "cpu_quota", "memory": "memory_quota", "gpu": "gpu_quota", "vram": "vram_quota_mb"}


def add_parser(commands: Any) -> None:
    quota = commands.add_parser("quota", help="per-project resource quotas (get, set, usage)")
    actions = quota.add_subparsers(dest="quota_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("project", metavar="PROJECT", help="project id (UUID or name)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--provider", choices=("local", "slurm"), help="default: $QUOTA_PROVIDER or local")
    common.add_argument("--db", metavar="PATH", help="SQLite file (default: $QUOTA_DB_PATH or the XDG state dir)")
    common.add_argument("--dsn", metavar="URL", help="PostgreSQL postgresql://... (default: $QUOTA_DATABASE_URL)")
    common.add_argument("--account-prefix", metavar="PREFIX", help="Slurm account prefix ($SLURM_ACCOUNT_PREFIX)")
    actions.add_parser("get", parents=[common], help="quota and usage of PROJECT (seed 004's monitoring view)")
    actions.add_parser("usage", parents=[common], help="what PROJECT uses, per job type")
    setter = actions.add_parser("set", parents=[common], help="set PROJECT's limits (others kept)")
    setter.add_argument("--cpu", type=float, metavar="CORES")
    setter.add_argument("--memory", type=float, metavar="GIB")
    setter.add_argument("--gpu", type=int, metavar="N")
    setter.add_argument("--vram-mb", type=float, metavar="MB")
    setter.add_argument(
        "--clear", metavar="LIST", default="", help="comma list of cpu,memory,gpu,vram made unlimited"
    )
    enforce = setter.add_mutually_exclusive_group()
    enforce.add_argument("--enforce", dest="enforce", action="store_true", default=None)
    enforce.add_argument("--no-enforce", dest="enforce", action="store_false")


def _provider(args: argparse.Namespace) -> Any:
    from .quotas import LocalQuotaProvider, SlurmQuotaProvider, quota_provider_from_env

    kind = args.provider or os.environ.get("QUOTA_PROVIDER", "local")
    if kind == "slurm" or args.account_prefix is not None:
        return SlurmQuotaProvider(args.account_prefix)
    if args.dsn:
        return LocalQuotaProvider(dsn=args.dsn)
    if args.db:
        return LocalQuotaProvider(path=args.db)
    return quota_provider_from_env()


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "unlimited"
    return f"{value:g}"


def _print_info(info: Any) -> None:
    print(f"project {info.project_id}  provider {info.provider} ({info.backend})  enforce {info.enforce_quota}")
    rows = [
        ("cpu", "cores", info.used_cpu, info.cpu_quota, info.cpu_usage_percent),
        ("memory", "GiB", info.used_memory, info.memory_quota, info.memory_usage_percent),
        ("gpu", "", info.used_gpu, info.gpu_quota, info.gpu_usage_percent),
        ("vram", "MB", info.used_vram_mb, info.vram_quota_mb, info.vram_usage_percent),
    ]
    for name, unit, used, quota, pct in rows:
        share = "" if pct is None else f"  {pct:.1f}%"
        print(f"  {name:<7}{_fmt(used)} / {_fmt(quota)}{' ' + unit if unit else ''}{share}")
    print(f"  synced {info.to_dict()['synced_at']}")


def run(args: argparse.Namespace) -> int:
    from .quotas import InvalidQuota, QuotaBackendError

    try:
        provider = _provider(args)
        if args.quota_command == "usage":
            usage = provider.usage(args.project)
            if args.json:
                print(json.dumps(usage.to_dict()))
            else:
                print(f"project {usage.project_id}: cpu {usage.cpu:g} cores, memory {usage.memory:g} GiB, "
                      f"gpu {usage.gpu}, vram {usage.vram_mb:g} MB")
                for job_type, used in sorted(usage.by_job_type.items()):
                    print(f"  {job_type:<12}cpu {used.cpu:g}, memory {used.memory:g}, gpu {used.gpu}, "
                          f"vram {used.vram_mb:g}")
                if usage.slurm_jobs is not None:
                    s = usage.slurm_jobs
                    print(f"  {'slurm jobs':<12}cpu {s.cpu:g}, memory {s.memory:g}, gpu {s.gpu}")
            return 0
        if args.quota_command == "set":
            fields: dict[str, Any] = {}
            for name in filter(None, (c.strip() for c in args.clear.split(","))):
                if name not in _CLEARABLE:
                    raise InvalidQuota(f"--clear takes cpu, memory, gpu, vram; got {name!r}")
                fields[_CLEARABLE[name]] = None
            for option, key in (("cpu", "cpu_quota"), ("memory", "memory_quota"), ("gpu", "gpu_quota"),
                                ("vram_mb", "vram_quota_mb")):
                value = getattr(args, option)
                if value is not None:
                    fields[key] = value
            if args.enforce is not None:
                fields["enforce_quota"] = args.enforce
            info = provider.set_quota(args.project, **fields)
        else:
            info = provider.get_quota(args.project)
            if info is None:
                print(f"no quota for project {args.project!r} ({provider.describe()})", file=sys.stderr)
                return 1
        if args.json:
            print(json.dumps(info.to_dict()))
        else:
            _print_info(info)
        return 0
    except InvalidQuota as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except QuotaBackendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
