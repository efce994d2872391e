"""Real services the quota tests run against: a PostgreSQL server and a
single-node Slurm cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd),
each private to the test session (temp dirs, random loopback ports) and
stopped at the end. No mocks: the quota backends talk to the real thing.

Packages a fresh machine lacks are installed with apt (``.ci/run`` does the
same up front); where apt itself is unavailable the caller skips with the
reason this module returns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

SLURM_PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
SLURM_BINARIES = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacctmgr", "sbatch")
POSTGRES_PACKAGES = ("postgresql",)

_apt_updated = False


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin:/usr/bin")


def missing_binaries(binaries: Iterable[str]) -> list[str]:
    return [b for b in binaries if _which(b) is None]


def missing_postgres() -> list[str]:
    return [] if postgres_bin_dir() else ["/usr/lib/postgresql/*/bin/initdb"]


def missing_slurm() -> list[str]:
    return missing_binaries(SLURM_BINARIES)


def ensure_packages(packages: Sequence[str], missing_now: Callable[[], list[str]]) -> str | None:
    """Install ``packages`` with apt when ``missing_now()`` names something.

    Returns ``None`` when nothing is missing (any more), else the reason it
    cannot be installed (no apt, not root, or what apt printed)."""
    global _apt_updated
    missing = missing_now()
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"{', '.join(missing)} not installed and apt-get is unavailable"
    if os.geteuid() != 0:
        return f"{', '.join(missing)} not installed and apt-get needs root (uid {os.geteuid()})"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        _apt_updated = True
    install = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {install.stderr.strip()[-500:]}"
    still = missing_now()
    if still:
        return f"apt installed {' '.join(packages)} but {', '.join(still)} is still missing"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, ready, timeout: float, logs: Sequence[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    tails = []
    for log in logs:
        try:
            tails.append(f"--- {log}:\n{log.read_text(errors='replace')[-2000:]}")
        except OSError:
            pass
    raise RuntimeError(f"{what} did not become ready within {timeout} s\n" + "\n".join(tails))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PostgresServer:
    """``initdb`` into a temp dir and ``postgres`` on a random loopback port.

    PostgreSQL refuses to run as root, so under root the server runs as
    ``nobody`` (owner of the data dir); otherwise as the current user."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb")
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ps-postgres-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "nobody", "--", *argv]
        return argv

    def start(self) -> "PostgresServer":
        """initdb + postgres; on any failure stops the server and raises."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "PostgresServer":
        data = self.root / "data"
        log = self.root / "postgres.log"
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        subprocess.run(
            self._as_owner(
                [f"{self.bin_dir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            self._as_owner(
                [
                    f"{self.bin_dir}/postgres",
                    "-D", str(data),
                    "-p", str(self.port),
                    "-k", str(self.root),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off",
                    "-c", "max_connections=200",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
        )
        ready = lambda: (  # noqa: E731
            subprocess.run(
                [f"{self.bin_dir}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            ).returncode
            == 0
        )
        _wait_for("postgres", ready, 30.0, [log])
        return self

    def stop(self) -> None:
        _stop(self.proc, sig=signal.SIGINT)  # "fast" shutdown: do not wait for clients
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- Slurm


class SlurmCluster:
    """A single-node Slurm cluster with accounting and 2 fake GPUs.

    munged (private key and socket), MariaDB (private datadir, loopback
    port), slurmdbd, slurmctld and slurmd, all configured from one temp dir;
    ``env`` carries ``SLURM_CONF`` for the client commands. The GPUs are
    character devices made with ``mknod c 195 N`` (what gres.conf requires);
    ``AccountingStorageEnforce=associations,limits,qos`` so GrpTRES limits
    hold jobs back."""

    GPUS = 2

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ps-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.cluster = "pstest"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"))
        self.logs: list[Path] = []

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.root / log_name
        self.logs.append(log)
        proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env or self.env)
        self.procs.append(proc)
        return proc

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def start(self) -> "SlurmCluster":
        """Starts every daemon; on any failure stops what it started and raises."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "SlurmCluster":
        r = self.root
        for sub in ("munge", "db", "state", "spool", "dev", "run"):
            (r / sub).mkdir(mode=0o700)
        # munge: a private key and socket
        munge_sock = r / "munge" / "munge.socket"
        subprocess.run(["mungekey", "-c", "-k", str(r / "munge" / "munge.key")], check=True, capture_output=True)
        self._spawn(
            [
                _which("munged") or "munged", "-F", "--force",
                f"--socket={munge_sock}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
                f"--log-file={r / 'munge' / 'munged.log'}",
            ],
            "munged.out",
        )
        # MariaDB: a private datadir on a loopback port
        db_port, dbd_port, ctld_port, slurmd_port = free_port(), free_port(), free_port(), free_port()
        db_sock = r / "db" / "mysqld.sock"
        subprocess.run(
            ["mariadb-install-db", f"--datadir={r / 'db' / 'data'}", "--user=root", "--skip-test-db",
             "--auth-root-authentication-method=socket"],
            check=True,
            capture_output=True,
        )
        self._spawn(
            [
                _which("mariadbd") or "mariadbd", "--no-defaults", f"--datadir={r / 'db' / 'data'}", "--user=root",
                f"--socket={db_sock}", f"--port={db_port}", "--bind-address=127.0.0.1",
                f"--pid-file={r / 'db' / 'mysqld.pid'}", "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M", "--skip-name-resolve",
            ],
            "mariadbd.log",
        )
        _wait_for("mariadbd", lambda: db_sock.exists() and _port_open(db_port), 60.0, self.logs)
        subprocess.run(
            ["mariadb", "-S", str(db_sock), "-u", "root", "-e",
             "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
             "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"],
            check=True,
            capture_output=True,
        )
        # fake GPUs: character devices with the NVIDIA major number
        for i in range(self.GPUS):
            os.mknod(r / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(195, i))
        cpus = os.cpu_count() or 1
        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_sock}\n"
        (r / "slurmdbd.conf").write_text(
            auth
            + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
            f"PidFile={r / 'run' / 'slurmdbd.pid'}\nLogFile={r / 'slurmdbd.log'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={db_port}\n"
            "StorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct_db\n"
        )
        os.chmod(r / "slurmdbd.conf", 0o600)
        (r / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File={r / 'dev'}/nvidia[0-{self.GPUS - 1}]\n")
        (r / "slurm.conf").write_text(
            auth
            + f"ClusterName={self.cluster}\nSlurmctldHost={self.host}(127.0.0.1)\n"
            f"SlurmUser=root\nSlurmdUser=root\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={r / 'slurmctld.log'}\nSlurmdLogFile={r / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "JobAcctGatherType=jobacct_gather/none\nReturnToService=2\n"
            "SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            "GresTypes=gpu\nDefMemPerCPU=64\nSlurmdParameters=config_overrides\n"
            "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={dbd_port}\nAccountingStoragePass={munge_sock}\n"
            "AccountingStorageEnforce=associations,limits,qos\n"
            "AccountingStorageTRES=gres/gpu\n"
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1024 Gres=gpu:{self.GPUS} State=UNKNOWN\n"
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        )
        _wait_for("munged", munge_sock.exists, 10.0, self.logs)
        self._spawn([_which("slurmdbd") or "slurmdbd", "-D"], "slurmdbd.out")
        _wait_for("slurmdbd", lambda: _port_open(dbd_port), 60.0, self.logs + [r / "slurmdbd.log"])
        self.run("sacctmgr", "-i", "add", "cluster", self.cluster)
        self._spawn([_which("slurmctld") or "slurmctld", "-D", "-i"], "slurmctld.out")
        _wait_for("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0, 60.0,
                  self.logs + [r / "slurmctld.log"])
        self._spawn([_which("slurmd") or "slurmd", "-D", "-N", self.host], "slurmd.out")

        def node_idle() -> bool:
            out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            return out in ("idle", "mix", "alloc")

        _wait_for("slurmd", node_idle, 60.0, self.logs + [r / "slurmd.log", r / "slurmctld.log"])
        return self

    def stop(self) -> None:
        if self.procs:
            self.run("scancel", "-u", pwd.getpwuid(os.geteuid()).pw_name, check=False)
        for proc in reversed(self.procs):
            _stop(proc)
        shutil.rmtree(self.root, ignore_errors=True)
