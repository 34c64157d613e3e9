"""What keeps a search inside its folders and its secrets out of the records.

- Names (``--name``, ``--experiment``, a space's name) follow one pattern, so that none walks out of the
  storage path, the results folder or MLflow's artifact folders, and none breaks an MLflow filter.
- ``redact`` takes credentials out of URIs before anything is logged, written or printed.
- A local storage folder must be the user's own and writable by nobody else: ``--resume`` unpickles
  Ray's and Optuna's state from it.
- ``DriverLock`` lets one driver at a time run a search.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path

from tuner.errors import UserError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
NAME_RULE = "1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"


def check_name(what: str, name: str) -> str:
    """``name`` if it follows NAME_PATTERN, else one line saying the rule."""
    if not NAME_RE.match(name) or name in (".", ".."):
        raise UserError(f"{what} {name!r} is not allowed: use {NAME_RULE}")
    return name


def unique_name(space_name: str) -> str:
    """SPACE-YYYYmmdd-HHMMSS-xxxx: two searches started in the same second still differ."""
    return f"{space_name[:100]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# ---- secrets ---------------------------------------------------------------------------------------------

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&;#\s]*(?:token|password|passwd|pwd|secret|key|signature|sig|credential|auth)"
    r"[^=&;#\s]*=)(?P<value>[^&;#\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URI, a command line, any string) with the credentials of its URIs replaced by ``***``:
    ``user:password@`` (and a bare ``token@``) and query parameters named like a token, password, secret,
    key or signature."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


def redact_all(value):
    """``redact`` applied to every string inside dicts and lists."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value


# ---- the storage folder ----------------------------------------------------------------------------------

def check_private(folder: Path, what: str) -> None:
    """Refuse a folder owned by another user, or one that group or others may write to."""
    try:
        info = folder.stat()
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid():
        raise UserError(f"{what} {folder} belongs to another user (uid {info.st_uid}); a search resumes by "
                        f"unpickling what is there, so use a folder of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(f"{what} {folder} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); a "
                        f"search resumes by unpickling what is there: `chmod go-w {folder}` or use another folder")


def prepare_storage(root: Path, experiment: Path) -> None:
    """Make the storage root (never group- or world-writable) and check it and the search's folder."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise UserError(f"--storage-path {root} cannot be created: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise UserError(f"--storage-path {root} is not a folder")
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"--storage-path {root} is not writable by this user; choose another folder")
    check_private(root, "--storage-path")
    check_private(experiment, "the search's folder")


class DriverLock:
    """An exclusive ``flock`` on ``path`` for as long as the driver runs, holding its pid and host. The
    kernel releases it when the driver exits, however it exits; a driver that ends normally also removes
    the file (under the lock, and a taker checks that the file it locked is still the one at ``path``)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.fd, self.holder = path, name, None, "unknown"

    def _open_locked(self) -> int | None:
        """A descriptor of ``path`` locked by us, or None when another driver holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                return None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)       # its driver removed the file as we opened it: take the new one

    def __enter__(self) -> "DriverLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = self._open_locked()
        except OSError as exc:
            raise UserError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        if fd is None:
            raise UserError(f"search {self.name} is being run by another driver ({self.holder}); wait for it to "
                            f"end or stop it, then --resume")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)          # closing releases the lock
            self.fd = None
