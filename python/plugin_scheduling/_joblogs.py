"""The output files of ``Command`` jobs, bounded: ``<journal>.logs/``.

Each stream of a job goes to ``<journal>.logs/<job_id>.<stream>.log``
(``stdout``/``stderr``, 0600, never through a symlink, in a directory of
this user that no one else can write). Past ``limit`` bytes a file is
rotated to ``.log.1`` (the previous ``.1`` is dropped), so the newest
output is kept and at most ``2 * limit`` bytes per stream are on disk. A
new attempt of a job (a retry, a rerun after a crash) moves the previous
attempt's output to ``.1`` first.

How the bound is kept depends on the recovery mode:

* ``kill`` (the default): the command writes to pipes that the scheduler
  reads (``Sink.write``), so the bound is exact and nothing is lost; the
  files are written as output arrives, so they survive a crash of the
  scheduler (the command dies with it).
* ``adopt``: the command must outlive the scheduler, so it writes to the
  files itself (``O_APPEND``); the scheduler checks their size every
  ``CHECK_INTERVAL_S`` while it waits and, past the limit, copies the
  file's last ``limit`` bytes to ``.1`` and truncates it (what is written
  during that copy is lost, and a file can pass the limit by what the
  command writes between two checks).

Standard library only; no thread, no import-time work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path
from typing import Any, Awaitable, Sequence

STREAMS = ("stdout", "stderr")
#: Default bound of one stream's file (bytes; one rotated part more is kept).
DEFAULT_LIMIT = 1 << 20
#: Bytes of each stream's end kept in memory for the job's error message
#: and out-of-memory detection.
TAIL_BYTES = 2000
#: How often the files of an adopt-mode command are checked against the bound.
CHECK_INTERVAL_S = 0.25
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def directory(journal: str) -> Path:
    return Path(journal + ".logs")


def checked_directory(journal: str) -> Path:
    """The log directory, created 0700; refused when it is a symlink, not
    this user's or writable by others."""
    d = directory(journal)
    d.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{d} must be a directory of this user that no one else can write (not a symlink)")
    return d


def path(d: Path, job_id: int, stream: str) -> Path:
    return d / f"{job_id}.{stream}.log"


class Sink:
    """One stream of one job: its file (or, with no directory, only the
    tail in memory)."""

    def __init__(self, d: Path | None, job_id: int, stream: str, limit: int, *, direct: bool = False, new_attempt: bool = True) -> None:
        self.path = None if d is None else path(d, job_id, stream)
        self.limit = max(int(limit), 1024)
        self.tail = b""
        self.size = 0
        self.rotated = False
        self.fd: int | None = None
        if self.path is None:
            return
        if new_attempt:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self.path).st_size > 0:
                    os.replace(self.path, self._old())
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        else:  # an adopted command's file: kept, only watched
            flags = os.O_WRONLY | os.O_CREAT
        self.fd = os.open(self.path, flags | _NOFOLLOW | (os.O_APPEND if direct else 0), 0o600)
        self.size = os.fstat(self.fd).st_size

    def _old(self) -> str:
        assert self.path is not None
        return os.fspath(self.path) + ".1"

    def write(self, data: bytes) -> None:
        """Output read from the command's pipe (kill mode)."""
        self.tail = (self.tail + data)[-TAIL_BYTES:]
        if self.fd is None:
            return
        if self.size + len(data) > self.limit and self.size > 0:
            self._rotate_file()
        if len(data) > self.limit:
            data = data[-self.limit :]
        os.write(self.fd, data)
        self.size += len(data)

    def _rotate_file(self) -> None:
        assert self.fd is not None and self.path is not None
        os.close(self.fd)
        self.fd = None
        os.replace(self.path, self._old())
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
        self.size = 0
        self.rotated = True

    def check(self) -> None:
        """Keeps a file the command writes itself within the bound (adopt
        mode): copy its end to ``.1``, then truncate it."""
        if self.fd is None or self.path is None:
            return
        size = os.fstat(self.fd).st_size
        if size <= self.limit:
            return
        src = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        try:
            os.lseek(src, max(size - self.limit, 0), os.SEEK_SET)
            data = os.read(src, self.limit)
        finally:
            os.close(src)
        tmp = self._old() + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            os.write(out, data)
        finally:
            os.close(out)
        os.replace(tmp, self._old())
        os.ftruncate(self.fd, 0)
        self.rotated = True

    def end(self, nbytes: int = TAIL_BYTES) -> str:
        """The last ``nbytes`` of this attempt's output (for the error message)."""
        if self.fd is None or self.path is None:
            return self.tail[-nbytes:].decode(errors="replace")
        data = _read_end(self.path, nbytes)
        if len(data) < nbytes and self.rotated:
            data = _read_end(Path(self._old()), nbytes - len(data)) + data
        return data.decode(errors="replace")

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _read_end(p: Path, nbytes: int) -> bytes:
    try:
        fd = os.open(p, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - nbytes, 0))
        return f.read(nbytes)


async def pump(reader: asyncio.StreamReader | None, sink: Sink) -> None:
    """Copies a command's pipe to its sink until the pipe closes."""
    if reader is None:
        return
    while True:
        data = await reader.read(65536)
        if not data:
            return
        sink.write(data)


async def watch(done: Awaitable[Any], sinks: Sequence[Sink]) -> None:
    """Awaits ``done`` (an adopt-mode command's end), keeping its files
    within the bound meanwhile."""
    task = asyncio.ensure_future(done)
    try:
        while True:
            finished, _ = await asyncio.wait({task}, timeout=CHECK_INTERVAL_S)
            for sink in sinks:
                with contextlib.suppress(OSError):
                    sink.check()
            if finished:
                task.result()
                return
    finally:
        if not task.done():
            task.cancel()


def read(d: Path, job_id: int, stream: str, lines: int | None) -> tuple[str, bool]:
    """The last ``lines`` lines of a stream (all kept when None), its
    rotated part included; ``truncated``: older output is not shown."""
    chunks = []
    truncated = False
    p = path(d, job_id, stream)
    for part in (Path(os.fspath(p) + ".1"), p):
        try:
            fd = os.open(part, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            chunks.append(f.read())
        if part is not p:
            truncated = True  # older output than .1 was dropped, perhaps
    parts = b"".join(chunks).decode("utf-8", errors="replace").splitlines(keepends=True)
    if lines is not None and len(parts) > lines:
        truncated = True
        parts = parts[-lines:]
    return "".join(parts), truncated
