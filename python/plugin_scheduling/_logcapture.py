"""Runs a command with its stdout and stderr captured to bounded files.

``python -IS _logcapture.py --dir DIR --limit BYTES -- ARGV...``: the server's
submit path wraps a ``Command`` in this (argv, never a shell). The command
runs as a child in the wrapper's process group, so the job scheduler's
signals to the group (SIGSTOP/SIGCONT/SIGTERM/SIGKILL) reach both; the
wrapper waits for the child and ends as it did (same exit status, or killed
by the same signal). Each stream goes to ``DIR/stdout.log`` /
``DIR/stderr.log`` (0600, never through a symlink); when one grows past
``BYTES`` it is renamed to ``*.log.1`` (the previous ``.1`` is dropped), so
the newest output is kept and at most ``2 * BYTES`` per stream is on disk.
The last 2000 bytes of each stream are also written to the wrapper's own
stdout/stderr at exit (the scheduler's error message and OOM detection
read them). The wrapper dies with the scheduler that started it and the child with the
wrapper (``PR_SET_PDEATHSIG``, Linux), so a job never outlives its scheduler. Standard
library only: it runs with ``-IS`` (isolated, no site) and imports nothing from the package.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys

_STREAMS = ("stdout", "stderr")
#: Bytes of each stream's end also echoed to the wrapper's own stream at
#: exit, so the job scheduler's error message and OOM detection see them.
_ECHO = 2000


def _pdeathsig() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Sink:
    def __init__(self, directory: str, name: str, limit: int) -> None:
        self.path = os.path.join(directory, f"{name}.log")
        self.limit = limit
        self.fd = self._open()
        self.size = 0
        self.tail = b""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-_ECHO:]
        if self.size + len(data) > self.limit and self.size > 0:
            os.close(self.fd)
            os.replace(self.path, self.path + ".1")
            self.fd = self._open()
            self.size = 0
        if len(data) > self.limit:
            data = data[-self.limit :]
        os.write(self.fd, data)
        self.size += len(data)


def main(argv: list[str]) -> int:
    try:
        sep = argv.index("--")
    except ValueError:
        print("usage: _logcapture.py --dir DIR --limit BYTES -- ARGV...", file=sys.stderr)
        return 2
    opts, command = argv[:sep], argv[sep + 1 :]
    if len(opts) != 4 or opts[0] != "--dir" or opts[2] != "--limit" or not command:
        print("usage: _logcapture.py --dir DIR --limit BYTES -- ARGV...", file=sys.stderr)
        return 2
    directory, limit = opts[1], max(int(opts[3]), 1024)
    # The wrapper dies with the scheduler that started it, and the command
    # with the wrapper: a job never outlives its scheduler (at most once).
    _pdeathsig()
    if os.getppid() == 1:  # the scheduler died before prctl took effect
        return 137
    sinks = {name: _Sink(directory, name, limit) for name in _STREAMS}
    # The group's SIGTERM/SIGINT is for the command: the wrapper outlives it
    # to collect its last output and its status.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)

    def child_setup() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _pdeathsig()

    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=child_setup)
    except OSError as e:
        sinks["stderr"].write(f"cannot run {command[0]!r}: {e}\n".encode())
        print(f"cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 127
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, sinks["stdout"])
    sel.register(proc.stderr, selectors.EVENT_READ, sinks["stderr"])
    open_streams = 2
    while open_streams:
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            key.data.write(data)
    rc = proc.wait()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.write(fd, sinks[name].tail)
        except OSError:
            pass
    if rc < 0:  # end as the command did: killed by the same signal
        if -rc not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
        return 128 - rc  # a signal whose default is not to end the process
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
