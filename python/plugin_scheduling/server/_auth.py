"""Bearer tokens: who is calling, and what they may see.

A tokens file is JSON ``{"<token>": {"user": "ann", "projects": ["vision"],
"admin": false}}``. It must be a regular file (not a symlink) of mode 0600 or
0400 owned by the server's user: anything else is refused, naming the path
and the mode. Tokens are kept only as SHA-256 digests, so a lookup compares
digests (no timing oracle on the token itself)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Identity", "TokenStore", "TokenFileError", "load_tokens", "create_token_file", "default_tokens_path"]

#: Shortest token accepted (a token is a password).
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class TokenFileError(ValueError):
    """The tokens file cannot be used (its path and why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a token is: a user, the projects they belong to, admin or not."""

    user: str
    projects: frozenset[str]
    admin: bool = False

    def may_see(self, project: str | None) -> bool:
        """Admins see everything; others their projects' jobs (a job without
        a project is admin-only)."""
        return self.admin or (project is not None and project in self.projects)

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "projects": sorted(self.projects), "admin": self.admin}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """Tokens to identities."""

    def __init__(self, tokens: Mapping[str, Identity | Mapping[str, Any]], source: str = "<mapping>") -> None:
        self.source = source
        self._by_digest: dict[bytes, Identity] = {}
        for i, (token, raw) in enumerate(tokens.items()):
            where = f"{source}: entry {i + 1}"
            if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
                raise TokenFileError(f"{where}: a token must be a string of at least {MIN_TOKEN_LENGTH} characters")
            ident = raw if isinstance(raw, Identity) else _identity(raw, where)
            self._by_digest[_digest(token)] = ident

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        return self._by_digest.get(_digest(token))


def _identity(raw: Any, where: str) -> Identity:
    if not isinstance(raw, Mapping):
        raise TokenFileError(f"{where}: must be an object with user, projects and admin, got {type(raw).__name__}")
    unknown = set(raw) - {"user", "projects", "admin"}
    if unknown:
        raise TokenFileError(f"{where}: unknown field(s) {sorted(unknown)} (allowed: user, projects, admin)")
    user = raw.get("user")
    if not isinstance(user, str) or not _NAME.match(user):
        raise TokenFileError(f"{where}: user must be a name of letters, digits and ._@- (at most 128), got {user!r}")
    projects = raw.get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) and _NAME.match(p) for p in projects):
        raise TokenFileError(f"{where} (user {user!r}): projects must be a list of project names, got {projects!r}")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise TokenFileError(f"{where} (user {user!r}): admin must be true or false, got {admin!r}")
    return Identity(user, frozenset(projects), admin)


def load_tokens(path: str | os.PathLike[str]) -> TokenStore:
    """Reads a tokens file, refusing one that others could read or write."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise TokenFileError(f"cannot open tokens file {p}: {e.strerror or e} (a symlink is refused)") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"tokens file {p} is not a regular file")
        if mode not in (0o600, 0o400):
            raise TokenFileError(f"tokens file {p} has mode {mode:04o}; it must be 0600 (chmod 600 {p})")
        if st.st_uid != os.geteuid():
            raise TokenFileError(f"tokens file {p} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(4 * 1024 * 1024 + 1)
    finally:
        os.close(fd)
    if len(data) > 4 * 1024 * 1024:
        raise TokenFileError(f"tokens file {p} is larger than 4 MiB")
    try:
        tokens = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenFileError(f"tokens file {p} is not valid JSON: {e}") from None
    if not isinstance(tokens, dict):
        raise TokenFileError(f"tokens file {p} must hold a JSON object {{token: {{user, projects, admin}}}}")
    return TokenStore(tokens, source=p)


def default_tokens_path() -> Path:
    """``$XDG_CONFIG_HOME/plugin-scheduling/tokens.json`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "plugin-scheduling" / "tokens.json"


def create_token_file(path: str | os.PathLike[str], user: str = "admin") -> tuple[Path, bool]:
    """Makes ``path`` (0600; its directory 0700) with one admin token unless
    it exists; ``(path, created)``. Never writes through a symlink."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    body = json.dumps({token: {"user": user, "projects": [], "admin": True}}, indent=2) + "\n"
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return p, False
    with os.fdopen(fd, "w") as f:
        f.write(body)
    return p, True
