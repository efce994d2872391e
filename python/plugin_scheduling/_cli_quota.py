"""``python -m plugin_scheduling quota get|set|usage PROJECT``.

The provider comes from the environment (``QUOTA_PROVIDER``,
``SLURM_ACCOUNT_PREFIX``, ``QUOTA_DB_PATH``, ``QUOTA_DATABASE_URL``) unless
``--provider``/``--db``/``--dsn`` say otherwise. ``get`` and ``usage`` only read:
they never create a database (a missing one is reported).
Exit status: 0 done, 1 no quota for the project (or no database), 2 bad input,
3 backend failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

_CLEARABLE = {"cpu": "cpu_quota", "memory": "memory_quota", "gpu": "gpu_quota", "vram": "vram_quota_mb"}


QUOTA_EPILOG = """\
examples:
  %(prog)s set my-project --gpu 4 --memory 64 --enforce
  %(prog)s get my-project
  %(prog)s usage my-project --json
  %(prog)s get my-project --provider slurm --account-prefix project-

The provider: --provider, else $QUOTA_PROVIDER (local or slurm); the local provider
uses --dsn / $QUOTA_DATABASE_URL (PostgreSQL) or --db / $QUOTA_DB_PATH (SQLite,
default $XDG_STATE_HOME/plugin-scheduling/quotas.db). get and usage never create
a database. Exit status: 0 done, 1 no quota (or no database), 2 bad input,
3 backend failure."""


def add_parser(commands: Any) -> None:
    from ._cli_util import HelpFormatter

    quota = commands.add_parser(
        "quota",
        help="per-project resource quotas (get, set, usage)",
        description="Per-project resource quotas: CPU cores, memory (GiB), GPUs and VRAM (MB).",
        epilog=QUOTA_EPILOG,
        formatter_class=HelpFormatter,
    )
    quota.set_defaults(_parser=quota)
    actions = quota.add_subparsers(dest="quota_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("project", metavar="PROJECT", help="project id (UUID or name)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--provider", choices=("local", "slurm"), help="default: $QUOTA_PROVIDER or local")
    common.add_argument("--db", metavar="PATH", help="SQLite file (default: $QUOTA_DB_PATH or the XDG state dir)")
    common.add_argument("--dsn", metavar="URL", help="PostgreSQL postgresql://... (default: $QUOTA_DATABASE_URL)")
    common.add_argument("--account-prefix", metavar="PREFIX", help="Slurm account prefix ($SLURM_ACCOUNT_PREFIX)")
    actions.add_parser(
        "get", parents=[common], help="quota and usage of PROJECT",
        description="PROJECT's limits, what it uses now and the share of each limit in use.",
        epilog="examples:\n  %(prog)s my-project\n  %(prog)s my-project --db ./quotas.db --json",
        formatter_class=HelpFormatter,
    )
    actions.add_parser(
        "usage", parents=[common], help="what PROJECT uses, per job type",
        description="What PROJECT uses now, per job type (and its running Slurm jobs with --provider slurm).",
        epilog="examples:\n  %(prog)s my-project\n  %(prog)s my-project --json",
        formatter_class=HelpFormatter,
    )
    setter = actions.add_parser(
        "set", parents=[common], help="set PROJECT's limits (others kept)",
        description="Sets the limits given; the others keep their values (--clear makes some unlimited).",
        epilog="examples:\n  %(prog)s my-project --gpu 4 --vram-mb 96000\n  %(prog)s my-project --clear cpu,memory --no-enforce",
        formatter_class=HelpFormatter,
    )
    setter.add_argument("--cpu", type=float, metavar="CORES", help="CPU cores the project may use at once")
    setter.add_argument("--memory", type=float, metavar="GIB", help="memory (GiB) the project may use at once")
    setter.add_argument("--gpu", type=int, metavar="N", help="GPUs the project may use at once")
    setter.add_argument("--vram-mb", type=float, metavar="MB", help="GPU memory (MB) the project may use at once (not with Slurm)")
    setter.add_argument(
        "--clear", metavar="LIST", default="", help="comma list of cpu,memory,gpu,vram made unlimited"
    )
    enforce = setter.add_mutually_exclusive_group()
    enforce.add_argument(
        "--enforce", dest="enforce", action="store_true", default=None, help="refuse what exceeds the quota"
    )
    enforce.add_argument(
        "--no-enforce", dest="enforce", action="store_false", help="only record usage (allow what exceeds the quota)"
    )


def _check_readable(args: argparse.Namespace) -> None:
    """``get``/``usage`` only read: a SQLite database that does not exist is
    reported (never created), a Slurm without its commands is refused before
    anything is opened."""
    import shutil

    from ._cli_util import CliError
    from .quotas import QuotaBackendError

    kind = (args.provider or os.environ.get("QUOTA_PROVIDER", "local")).strip().lower() or "local"
    if kind == "slurm" or args.account_prefix is not None:
        missing = [c for c in ("scontrol", "sacctmgr") if shutil.which(c) is None]
        if missing:
            raise QuotaBackendError(f"Slurm's {' and '.join(missing)} not found on PATH: is Slurm installed here?")
        return
    if kind != "local" or args.dsn or (not args.db and os.environ.get("QUOTA_DATABASE_URL")):
        return  # PostgreSQL (or an unknown provider, refused when opened)
    path = args.db or os.environ.get("QUOTA_DB_PATH") or os.fspath(_default_db())
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a quota database")
    if not os.path.exists(path):
        raise CliError(f"no such quota database: {path} (nothing was set yet; 'quota set' creates it)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\x00":
        raise CliError(f"{path}: not a quota database (not an SQLite file)")


def _default_db() -> Any:
    from .jobs import default_journal_path

    return default_journal_path().with_name("quotas.db")  # the core's default: the same state dir


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


def _set_fields(args: argparse.Namespace) -> dict[str, Any]:
    from .quotas import InvalidQuota

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
    return fields


def run(args: argparse.Namespace) -> int:
    from .quotas import InvalidQuota, QuotaBackendError

    if args.quota_command is None:
        args._parser.error("choose an action: get, set or usage (e.g. 'quota get my-project')")
    try:
        if args.quota_command in ("get", "usage"):
            _check_readable(args)
        else:
            fields = _set_fields(args)  # checked before a database is opened (or created)
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
