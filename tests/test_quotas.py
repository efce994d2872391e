"""Quotas against the real systems: an SQLite file, a PostgreSQL server and a
single-node Slurm cluster, all started by this suite (tests/services.py).

One contract suite runs on every backend (``provider`` fixture); then what
only one backend can show: several processes and SIGKILL on SQLite,
4 processes x N threads on PostgreSQL, real jobs held back by Slurm.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import services
from plugin_scheduling import __main__ as cli
from plugin_scheduling.quotas import (
    InvalidQuota,
    JobTypeEnum,
    LocalQuotaProvider,
    QuotaBackendError,
    QuotaInfo,
    QuotaProvider,
    Resources,
    SlurmQuotaProvider,
    as_quota_provider,
    quota_provider_from_env,
)

T = JobTypeEnum.TRAINING
GPU = Resources(gpu=1)


def new_project() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    reason = services.ensure_packages(services.POSTGRES_PACKAGES, services.missing_postgres)
    if reason is not None:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    server = services.PostgresServer().start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.SlurmCluster]:
    reason = services.ensure_packages(services.SLURM_PACKAGES, services.missing_slurm)
    if reason is not None:
        pytest.skip(f"Slurm unavailable: {reason}")
    cluster = services.SlurmCluster().start()
    saved = os.environ.get("SLURM_CONF")
    # the providers' sacctmgr/scontrol find the private cluster through SLURM_CONF
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql", "slurm"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> QuotaProvider:
    if request.param == "sqlite":
        return LocalQuotaProvider(path=tmp_path / "quotas.db")
    if request.param == "postgresql":
        return LocalQuotaProvider(dsn=request.getfixturevalue("postgres_dsn"))
    request.getfixturevalue("slurm")
    return SlurmQuotaProvider(ledger=tmp_path / "ledger.db")


# --------------------------------------------------------------------- contract


def test_unknown_project_has_no_quota(provider: QuotaProvider) -> None:
    assert provider.get_quota(new_project()) is None


def test_amounts_the_unit_cannot_count_are_refused(provider: QuotaProvider) -> None:
    """Issue 24 #13: 10,000 grants of 0.0004 cores fit a 0.001-core quota
    (each rounded to 0 millicores) and used_cpu stayed 0.0. Amounts are
    counted exactly, so what is not a whole number of units is refused."""
    project = new_project()
    provider.set_quota(project, cpu_quota=1, gpu_quota=4)
    for bad in (Resources(cpu=0.0004), Resources(cpu=0.5004, gpu=1), Resources(memory=1e-7), Resources(vram_mb=0.0001)):
        field = next(f for f in ("cpu", "memory", "vram_mb") if getattr(bad, f))
        for call in (provider.check_quota, provider.allocate_quota, provider.release_quota):
            with pytest.raises(InvalidQuota, match=rf"^{field} must be a whole number of the quota's unit.*, got "):
                call(project, bad, T)
    with pytest.raises(InvalidQuota, match=r"unit of 0\.001 core .*got 0\.0004$"):
        provider.allocate_quota(project, Resources(cpu=0.0004), T)
    assert provider.allocate_quota(project, Resources(cpu=0.001), T)
    info = provider.get_quota(project)
    assert info is not None and (info.used_cpu, info.used_gpu) == (0.001, 0)
    provider.release_quota(project, Resources(cpu=0.001), T)


def test_huge_counts_name_the_field(provider: QuotaProvider) -> None:
    """Issue 24 #15: Resources(gpu=2**63) raised an OverflowError without a field."""
    for kwargs, field in (({"gpu": 2**63}, "gpu"), ({"cpu": 10**400}, "cpu"), ({"memory": 2**1100}, "memory")):
        with pytest.raises(InvalidQuota, match=rf"^{field} must be"):
            Resources(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuota, match="^gpu_quota must be"):
        provider.set_quota(new_project(), gpu_quota=2**63)


def test_set_then_get_reports_the_seed_fields(provider: QuotaProvider) -> None:
    project = new_project()
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    info = provider.set_quota(project, cpu_quota=4.0, memory_quota=2.0, gpu_quota=2)
    got = provider.get_quota(project)
    assert isinstance(got, QuotaInfo)
    for view in (info, got):
        assert (view.cpu_quota, view.memory_quota, view.gpu_quota) == (4.0, 2.0, 2)
        assert (view.used_cpu, view.available_cpu, view.cpu_usage_percent) == (0.0, 4.0, 0.0)
        assert (view.used_gpu, view.available_gpu, view.gpu_usage_percent) == (0, 2, 0.0)
        assert view.enforce_quota is True
        assert view.provider == provider.name
    assert got.synced_at >= before
    assert got.to_dict()["synced_at"].endswith("Z")


def test_allocations_fill_the_quota_and_releases_free_it(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=2, cpu_quota=8)
    job = Resources(cpu=2, gpu=1)
    assert provider.allocate_quota(project, job, T)
    assert provider.allocate_quota(project, job, JobTypeEnum.INFERENCE)
    assert not provider.check_quota(project, job, T)
    refused = provider.allocate_quota_detail(project, job, T)
    assert not refused and refused.resource == "gpu" and project in (refused.reason or "")
    assert not refused.never_fits
    info = provider.get_quota(project)
    assert info is not None and (info.used_gpu, info.used_cpu, info.gpu_usage_percent) == (2, 4.0, 100.0)
    usage = provider.usage(project)
    assert usage.gpu == 2 and set(usage.by_job_type) == {"training", "inference"}
    provider.release_quota(project, job, T)
    assert provider.check_quota(project, job, T)
    assert provider.usage(project).by_job_type == {"inference": Resources(cpu=2.0, gpu=1)}


def test_a_request_over_the_whole_quota_never_fits(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=1)
    decision = provider.check_quota_detail(project, Resources(gpu=2), T)
    assert not decision.allowed and decision.never_fits and decision.resource == "gpu"


def test_set_quota_patches_and_none_clears(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, cpu_quota=2.0, gpu_quota=1)
    info = provider.set_quota(project, gpu_quota=3)
    assert (info.cpu_quota, info.gpu_quota) == (2.0, 3)
    info = provider.set_quota(project, cpu_quota=None)
    assert (info.cpu_quota, info.available_cpu, info.gpu_quota) == (None, None, 3)
    assert provider.check_quota(project, Resources(cpu=1000), T)


def test_over_release_is_refused_and_changes_nothing(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=2)
    assert provider.allocate_quota(project, GPU, T)
    with pytest.raises(InvalidQuota, match="releases 2 gpu"):
        provider.release_quota(project, Resources(gpu=2), T)
    with pytest.raises(InvalidQuota, match="job type batch"):
        provider.release_quota(project, GPU, JobTypeEnum.BATCH)
    assert provider.usage(project).gpu == 1


def test_bad_input_names_the_field(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=1)
    with pytest.raises(InvalidQuota, match="cpu must be a finite number"):
        Resources(cpu=-1)
    with pytest.raises(InvalidQuota, match="gpu must be a whole number"):
        Resources(gpu=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuota, match="job_type"):
        provider.check_quota(project, GPU, "gaming")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuota, match="project_id"):
        provider.get_quota(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuota, match="gpu_quota"):
        provider.set_quota(project, gpu_quota=-1)
    with pytest.raises(InvalidQuota, match="resources must be a Resources"):
        provider.allocate_quota(project, {"gpu": 1}, T)  # type: ignore[arg-type]


def test_uuid_and_str_ids_are_the_same_project(provider: QuotaProvider) -> None:
    project = uuid.uuid4()
    provider.set_quota(project, gpu_quota=1)
    assert provider.allocate_quota(str(project), GPU, T)
    assert not provider.check_quota(project, GPU, T)


def test_threads_never_exceed_a_quota(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=5)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            ok = provider.allocate_quota(project, GPU, T)
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 5 and len(granted) == 16
    assert provider.usage(project).gpu == 5


def test_enforcement_and_vram_per_backend(provider: QuotaProvider) -> None:
    project = new_project()
    provider.set_quota(project, gpu_quota=1)
    if isinstance(provider, SlurmQuotaProvider):
        # Slurm always enforces GrpTRES and has no VRAM resource: refused, not ignored
        with pytest.raises(InvalidQuota, match="enforce_quota"):
            provider.set_quota(project, enforce_quota=False)
        with pytest.raises(InvalidQuota, match="vram_quota_mb"):
            provider.set_quota(project, vram_quota_mb=1000.0)
        return
    provider.set_quota(project, vram_quota_mb=1000.0)
    assert not provider.check_quota(project, Resources(vram_mb=1500), T)
    provider.set_quota(project, enforce_quota=False)
    assert provider.allocate_quota(project, Resources(gpu=3, vram_mb=5000), T)
    info = provider.get_quota(project)
    assert info is not None and not info.enforce_quota and info.used_gpu == 3


# --------------------------------------------------------------------- interface


class DictQuotas(QuotaProvider):
    """A Python provider: the four seed methods only."""

    name = "dict"

    def __init__(self) -> None:
        self.used = 0

    def get_quota(self, project_id: object) -> None:
        return None

    def check_quota(self, project_id: object, resources: Resources, job_type: JobTypeEnum) -> bool:
        return self.used + resources.gpu <= 1

    def allocate_quota(self, project_id: object, resources: Resources, job_type: JobTypeEnum) -> bool:
        if not self.check_quota(project_id, resources, job_type):
            return False
        self.used += resources.gpu
        return True

    def release_quota(self, project_id: object, resources: Resources, job_type: JobTypeEnum) -> None:
        self.used -= resources.gpu


def test_a_python_subclass_is_a_provider() -> None:
    quotas = as_quota_provider(DictQuotas())
    assert quotas.allocate_quota("p", GPU, T)
    decision = quotas.allocate_quota_detail("p", GPU, T)
    assert not decision and "over quota" in (decision.reason or "")
    assert quotas.describe() == "dict (DictQuotas)"
    with pytest.raises(NotImplementedError, match="DictQuotas does not implement set_quota"):
        quotas.set_quota("p", gpu_quota=1)
    with pytest.raises(TypeError, match="QuotaProvider"):
        as_quota_provider(object())

    class Incomplete(QuotaProvider):
        def get_quota(self, project_id: object) -> None:
            return None

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_provider_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the Slurm ledger's default place
    local = quota_provider_from_env({"QUOTA_DB_PATH": str(tmp_path / "q.db")})
    assert isinstance(local, LocalQuotaProvider) and local.name == "local" and local.backend == "sqlite"
    assert str(tmp_path / "q.db") in local.describe()
    slurm = quota_provider_from_env(
        {"QUOTA_PROVIDER": "slurm", "SLURM_ACCOUNT_PREFIX": "grp_"}
    )
    assert isinstance(slurm, SlurmQuotaProvider) and slurm.account("ABC") == "grp_abc"
    assert (tmp_path / "plugin-scheduling" / "slurm-ledger.db").exists()
    with pytest.raises(InvalidQuota, match="Kubernetes ResourceQuota provider is a documented design"):
        quota_provider_from_env({"QUOTA_PROVIDER": "k8s"})
    assert JobTypeEnum("batch") is JobTypeEnum.BATCH


def test_default_sqlite_file_is_under_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    provider = LocalQuotaProvider()
    provider.set_quota("p", gpu_quota=1)
    path = tmp_path / "plugin-scheduling" / "quotas.db"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version FROM plugin_scheduling_schema WHERE component='quotas'").fetchone() == (1,)
        assert db.execute("SELECT gpu_quota FROM project_quotas WHERE project_id='p'").fetchone() == (1,)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(InvalidQuota, match="not both"):
        LocalQuotaProvider(path="x.db", dsn="postgresql://h/db")
    with pytest.raises(InvalidQuota, match="dsn must be"):
        LocalQuotaProvider(dsn="mysql://h/db")
    with pytest.raises(QuotaBackendError, match="cannot connect"):
        LocalQuotaProvider(dsn=f"postgresql://nobody@127.0.0.1:{services.free_port()}/x?connect_timeout=2")
    with pytest.raises(InvalidQuota, match="account_prefix"):
        SlurmQuotaProvider("bad prefix")


# --------------------------------------------------------------------- SQLite: processes, SIGKILL

CHILD = textwrap.dedent(
    """
    import sys
    from plugin_scheduling.quotas import LocalQuotaProvider, Resources, JobTypeEnum
    kind, where, project, n = sys.argv[1:5]
    p = LocalQuotaProvider(dsn=where) if kind == "pg" else LocalQuotaProvider(path=where)
    if kind == "loop":  # allocate/release until killed
        print("ready", flush=True)
        while True:
            if p.allocate_quota(project, Resources(gpu=1), JobTypeEnum.BATCH):
                p.release_quota(project, Resources(gpu=1), JobTypeEnum.BATCH)
    import threading
    granted = []
    def work():
        for _ in range(int(n)):
            granted.append(p.allocate_quota(project, Resources(gpu=1, cpu=0.5), JobTypeEnum.BATCH))
    threads = [threading.Thread(target=work) for _ in range(int(sys.argv[5]))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(sum(granted))
    """
)


def run_children(kind: str, where: str, project: str, processes: int, threads: int, each: int) -> int:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, where, project, str(each), str(threads)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        total += int(out.strip())
    return total


def test_sqlite_processes_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / "quotas.db"
    LocalQuotaProvider(path=db).set_quota("shared", gpu_quota=10, cpu_quota=100)
    granted = run_children("sqlite", str(db), "shared", processes=4, threads=2, each=5)
    assert granted == 10
    info = LocalQuotaProvider(path=db).get_quota("shared")
    assert info is not None and (info.used_gpu, info.used_cpu) == (10, 5.0)


def test_sqlite_survives_sigkill_mid_transaction(tmp_path: Path) -> None:
    db = tmp_path / "quotas.db"
    provider = LocalQuotaProvider(path=db)
    provider.set_quota("p", gpu_quota=1)
    assert provider.allocate_quota("p", GPU, T)
    # a writer holding the write lock with an uncommitted change, then SIGKILLed
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys,time;db=sqlite3.connect(sys.argv[1],isolation_level=None);"
            "db.execute('BEGIN IMMEDIATE');db.execute('UPDATE quota_usage SET gpu=99');"
            "db.execute('UPDATE project_quotas SET gpu_quota=99');print('held',flush=True);time.sleep(600)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "held"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    info = provider.get_quota("p")
    assert info is not None and (info.gpu_quota, info.used_gpu) == (1, 1)
    provider.release_quota("p", GPU, T)
    assert provider.allocate_quota("p", GPU, T)


def test_sqlite_provider_killed_while_allocating_leaves_a_consistent_file(tmp_path: Path) -> None:
    db = tmp_path / "quotas.db"
    provider = LocalQuotaProvider(path=db)
    provider.set_quota("p", gpu_quota=1)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "loop", str(db), "p", "0", "0"], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # let it run a few hundred allocate/release pairs: wait on the data, not a clock
        deadline = time.monotonic() + 30
        with sqlite3.connect(db) as watch:
            seen = 0
            while seen < 50 and time.monotonic() < deadline:
                row = watch.execute("SELECT gpu FROM quota_usage WHERE project_id='p'").fetchone()
                seen += 1 if row is not None else 0
        child.send_signal(signal.SIGKILL)
        child.wait()
        held = provider.usage("p").gpu
        assert held in (0, 1)  # whole transactions only: at most the one it held
        if held:
            provider.release_quota("p", GPU, JobTypeEnum.BATCH)
        assert provider.allocate_quota("p", GPU, T)
        provider.release_quota("p", GPU, T)


# --------------------------------------------------------------------- PostgreSQL


def test_postgres_processes_and_threads_never_exceed_a_quota(postgres_dsn: str) -> None:
    project = new_project()
    LocalQuotaProvider(dsn=postgres_dsn).set_quota(project, gpu_quota=13, cpu_quota=1000)
    granted = run_children("pg", postgres_dsn, project, processes=4, threads=4, each=3)
    assert granted == 13
    info = LocalQuotaProvider(dsn=postgres_dsn).get_quota(project)
    assert info is not None and (info.used_gpu, info.used_cpu, info.backend) == (13, 6.5, "postgresql")


def test_postgres_has_the_sqlite_schema(postgres_dsn: str, tmp_path: Path) -> None:
    pg = LocalQuotaProvider(dsn=postgres_dsn)
    assert pg.describe().startswith("local (postgresql://postgres@127.0.0.1:")
    LocalQuotaProvider(path=tmp_path / "q.db")
    with sqlite3.connect(tmp_path / "q.db") as db:
        lite = {
            (t, c)
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            for c in [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
        }
    out = subprocess.run(
        [
            f"{services.postgres_bin_dir()}/psql",
            postgres_dsn,
            "-At",
            "-c",
            "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema='public'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pg_cols = {tuple(line.split(".")) for line in out.split()}
    assert lite == pg_cols


@pytest.mark.timeout(60)
def test_postgres_row_lock_fails_within_lock_timeout(postgres_dsn: str) -> None:
    """Issue 24 #8: a transaction elsewhere holding the project's row
    blocked allocate_quota forever; now it waits lock_timeout, then fails
    naming the project and that its row is locked."""
    project = new_project()
    LocalQuotaProvider(dsn=postgres_dsn).set_quota(project, gpu_quota=4)
    holder = subprocess.Popen(
        [f"{services.postgres_bin_dir()}/psql", postgres_dsn, "-At", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(
            f"BEGIN;\nSELECT 'held' FROM project_quotas WHERE project_id = '{project}' FOR UPDATE;\n"
        )
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "BEGIN"
        assert holder.stdout.readline().strip() == "held"
        provider = LocalQuotaProvider(dsn=postgres_dsn, lock_timeout=0.5)
        with pytest.raises(QuotaBackendError, match=rf"project '{project}'|project \"{project}\"") as e:
            provider.allocate_quota(project, GPU, T)
        message = str(e.value)
        assert "row is locked by another transaction" in message and "0.5 s" in message, message
        with pytest.raises(QuotaBackendError, match="locked"):
            provider.release_quota(project, GPU, T)
        # Reads do not take the row lock.
        info = provider.get_quota(project)
        assert info is not None and info.used_gpu == 0
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # psql exits: its transaction rolls back
        holder.wait(timeout=30)
    # The same provider (same connection) works once the row is free.
    assert provider.allocate_quota(project, GPU, T)
    assert provider.get_quota(project).used_gpu == 1  # type: ignore[union-attr]


def test_lock_timeout_is_checked() -> None:
    for bad in (0, -1, 1e9, float("nan"), "5"):
        with pytest.raises(InvalidQuota, match="lock_timeout"):
            LocalQuotaProvider(dsn="postgresql://nobody@127.0.0.1:1/x", lock_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuota, match="lock_timeout applies to PostgreSQL"):
        LocalQuotaProvider(path="q.db", lock_timeout=5)


# --------------------------------------------------------------------- Slurm


def _squeue(cluster: services.SlurmCluster, job: str) -> tuple[str, str]:
    out = cluster.run("squeue", "-h", "-j", job, "-o", "%T|%r").stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


def _wait_state(cluster: services.SlurmCluster, job: str, want: set[str], timeout: float = 30) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    seen = ("", "")
    while time.monotonic() < deadline:
        seen = _squeue(cluster, job)
        if seen[0] in want and (seen[0] != "PENDING" or seen[1] not in ("None", "")):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job} stayed {seen}, wanted {want}")


def test_slurm_holds_back_the_second_gpu_job_and_check_quota_agrees(
    slurm: services.SlurmCluster, tmp_path: Path
) -> None:
    provider = SlurmQuotaProvider(ledger=tmp_path / "ledger.db")
    project = new_project()
    account = provider.account(project)
    provider.set_quota(project, gpu_quota=1, cpu_quota=2, memory_quota=0.5)
    assoc = slurm.run("sacctmgr", "-nP", "show", "assoc", f"account={account}", "user=", "format=grptres").stdout
    assert sorted(assoc.strip().split(",")) == ["cpu=2", "gres/gpu=1", "mem=512M"]
    assert provider.check_quota(project, GPU, T)
    sbatch = ["sbatch", "--parsable", f"--account={account}", "--gres=gpu:1", "-n1", "--mem=64", "-o", "/dev/null"]
    first = slurm.run(*sbatch, "--wrap", "sleep 300").stdout.strip()
    second = slurm.run(*sbatch, "--wrap", "sleep 300").stdout.strip()
    try:
        assert _wait_state(slurm, first, {"RUNNING"})[0] == "RUNNING"
        state, reason = _wait_state(slurm, second, {"PENDING"})
        assert reason in ("AssocGrpGRES", "QOSGrpGRES"), reason
        # our answer is Slurm's: the account's one GPU is in use
        decision = provider.check_quota_detail(project, GPU, T)
        assert not decision.allowed and decision.resource == "gpu"
        assert not provider.allocate_quota(project, GPU, T)
        info = provider.get_quota(project)
        assert info is not None and (info.used_gpu, info.gpu_quota, info.used_cpu) == (1, 1, 1.0)
        usage = provider.usage(project)
        assert usage.slurm_jobs == Resources(cpu=1, memory=64 / 1024, gpu=1) and usage.by_job_type == {}
        assert provider.check_quota(project, Resources(cpu=1), T)  # CPU 1 of 2 in use
        slurm.run("scancel", first)
        assert _wait_state(slurm, second, {"RUNNING"})[0] == "RUNNING"
        assert not provider.check_quota(project, GPU, T)
        slurm.run("scancel", second)
        deadline = time.monotonic() + 30
        while not provider.check_quota(project, GPU, T):
            assert time.monotonic() < deadline, "GPU never freed after scancel"
            time.sleep(0.1)
    finally:
        slurm.run("scancel", first, second, check=False)


def test_slurm_allocation_through_the_provider_counts_with_slurm_jobs(
    slurm: services.SlurmCluster, tmp_path: Path
) -> None:
    provider = SlurmQuotaProvider(ledger=tmp_path / "ledger.db")
    project = new_project()
    provider.set_quota(project, gpu_quota=2)
    assert provider.allocate_quota(project, GPU, T)
    sbatch = ["sbatch", "--parsable", f"--account={provider.account(project)}", "--gres=gpu:1", "-o", "/dev/null"]
    job = slurm.run(*sbatch, "--mem=64", "--wrap", "sleep 300").stdout.strip()
    try:
        _wait_state(slurm, job, {"RUNNING"})
        assert not provider.check_quota(project, GPU, T)  # 1 ledger + 1 Slurm job = 2 of 2
        provider.release_quota(project, GPU, T)
        assert provider.check_quota(project, GPU, T)
    finally:
        slurm.run("scancel", job, check=False)
    with pytest.raises(QuotaBackendError, match="no Slurm account"):
        provider.check_quota(new_project(), GPU, T)


# --------------------------------------------------------------------- CLI


def test_cli_set_get_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUOTA_DB_PATH", str(tmp_path / "q.db"))
    monkeypatch.delenv("QUOTA_PROVIDER", raising=False)
    assert cli.main(["quota", "set", "proj", "--cpu", "8", "--gpu", "2", "--memory", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["cpu_quota"], out["gpu_quota"], out["memory_quota"], out["provider"]) == (8.0, 2, 16.0, "local")
    LocalQuotaProvider(path=tmp_path / "q.db").allocate_quota("proj", Resources(gpu=1), T)
    assert cli.main(["quota", "get", "proj"]) == 0
    text = capsys.readouterr().out
    assert "gpu" in text and "1 / 2" in text and "50.0%" in text
    assert cli.main(["quota", "usage", "proj", "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["gpu"] == 1 and usage["by_job_type"]["training"]["gpu"] == 1
    assert cli.main(["quota", "set", "proj", "--clear", "cpu", "--no-enforce"]) == 0
    capsys.readouterr()
    info = LocalQuotaProvider(path=tmp_path / "q.db").get_quota("proj")
    assert info is not None and info.cpu_quota is None and not info.enforce_quota
    assert cli.main(["quota", "get", "missing"]) == 1
    assert "no quota" in capsys.readouterr().err
    assert cli.main(["quota", "set", "proj", "--gpu", "-3"]) == 2
    assert "gpu_quota must be >= 0" in capsys.readouterr().err
