"""A pg_auto_failover cluster on this machine: a monitor, a primary and a synchronous
secondary, on free ports in one folder (tests/chaos/test_failover.py, scripts/ha-cluster).

pg_auto_failover comes from Debian's ``postgresql-15-auto-failover``
(scripts/install-system-deps). Its ``pg_autoctl`` and PostgreSQL's initdb refuse to run as
root: as root, every command runs as ``postgres`` (``runuser``) and the folder is given to
that user. Each node is a ``pg_autoctl run`` keeper in a process group of its own, which
supervises the node's postmaster; :meth:`HACluster.crash` kills both, like a lost machine,
and :meth:`HACluster.run` starts the keeper again, which rejoins as a secondary.

With two data nodes pg_auto_failover sets ``number_sync_standbys = 0`` but keeps
``replication_quorum = true`` on each node, so the primary runs with
``synchronous_standby_names = 'ANY 1 (pgautofailover_standby_N)'`` and PostgreSQL's
default ``synchronous_commit = on``: a commit returns only once the secondary has flushed
it. While the secondary is gone the primary is ``wait_primary`` and commits alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

BINDIR = Path("/usr/lib/postgresql/15/bin")
PG_AUTOCTL = "pg_autoctl"
HOST = "127.0.0.1"
FORMATION = "default"


def available() -> str | None:
    """Why a cluster cannot start here (None: it can)."""
    if shutil.which(PG_AUTOCTL) is None:
        return "pg_autoctl not found (Debian: apt-get install postgresql-15-auto-failover)"
    if not (BINDIR / "pg_ctl").exists():
        return f"PostgreSQL 15 binaries not found under {BINDIR}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run pg_autoctl as"
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass
class Node:
    name: str
    port: int
    pgdata: Path
    keeper: subprocess.Popen[bytes] | None = None

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from its postmaster.pid (None: not running)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
            return None
        return pid


class HACluster:
    """A monitor and two data nodes under ``folder``; :meth:`start` returns the DSN."""

    def __init__(self, folder: Path, dbname: str = "postgres",
                 ports: list[int] | None = None) -> None:
        self.folder = folder.resolve()
        self.dbname = dbname
        monitor_port, *ports = ports or free_ports(3)
        self.monitor = Node("monitor", monitor_port, self.folder / "monitor")
        self.nodes = [Node(f"node{i}", port, self.folder / f"node{i}")
                      for i, port in enumerate(ports, 1)]
        self._logs: list[IO[bytes]] = []

    @classmethod
    def load(cls, folder: Path) -> HACluster:
        """The cluster :meth:`start` made in ``folder`` (its ports are in cluster.json)."""
        saved = json.loads((folder / "cluster.json").read_text())
        return cls(folder, saved["dbname"], saved["ports"])

    # -- the DSNs clients use ----------------------------------------------------------

    def dsn(self, dbname: str | None = None) -> str:
        """Both data nodes in one URL; libpq (psycopg) connects to whichever is the
        read-write one, in order."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        return (f"postgresql://postgres@{hosts}/{dbname or self.dbname}"
                "?target_session_attrs=read-write&connect_timeout=5")

    @property
    def monitor_dsn(self) -> str:
        return f"postgresql://autoctl_node@{HOST}:{self.monitor.port}/pg_auto_failover"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> str:
        """Create and run the monitor, then the primary, then the secondary (a base backup
        of the primary); return once they are primary and secondary."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.folder.chmod(0o700)
        ports = [self.monitor.port, *(node.port for node in self.nodes)]
        (self.folder / "cluster.json").write_text(
            json.dumps({"dbname": self.dbname, "ports": ports}))
        common = ["--auth", "trust", "--no-ssl", "--pgctl", str(BINDIR / "pg_ctl"),
                  "--hostname", HOST]
        self._autoctl("create", "monitor", "--pgdata", str(self.monitor.pgdata),
                      "--pgport", str(self.monitor.port), *common)
        self.run(self.monitor)
        self._wait(lambda: self._monitor_up(), timeout, "the monitor to accept connections")
        for node in self.nodes:
            self._autoctl("create", "postgres", "--pgdata", str(node.pgdata),
                          "--pgport", str(node.port), "--name", node.name,
                          "--listen", HOST, "--monitor", f"{self.monitor_dsn}?sslmode=disable",
                          *common)
            self.run(node)
            # One at a time: the first to register becomes the primary.
            self._wait(lambda n=node: self.states().get(n.name, ("", ""))[0] in
                       ("single", "wait_primary", "primary", "secondary"),
                       timeout, f"{node.name} to join")
        self.wait_healthy(timeout)
        return self.dsn()

    def run(self, node: Node) -> None:
        """Start ``node``'s keeper (``pg_autoctl run``), in a process group of its own."""
        log = (self.folder / f"{node.name}.log").open("ab")
        self._logs.append(log)
        node.keeper = subprocess.Popen(
            [*self._as_postgres(), PG_AUTOCTL, "run", "--pgdata", str(node.pgdata)],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def crash(self, node: Node) -> None:
        """SIGKILL ``node``'s postmaster, every process it started and its keeper's whole
        process group, so that nothing restarts it: the machine is gone, as far as the
        monitor and clients can tell. The postmaster is stopped first, so it forks
        nothing meanwhile, and its children are killed with it: a backend orphaned by a
        lone SIGKILL of the postmaster would still commit, for a moment, what it had in
        hand."""
        pid = node.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            for child in _children(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        if node.keeper is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.keeper.pid, signal.SIGKILL)
            node.keeper.wait(30)
            node.keeper = None

    def stop(self) -> None:
        """Stop every keeper (``pg_autoctl stop``, which stops its postgres), data nodes
        first; whatever is left after that is killed."""
        for node in [*self.nodes, self.monitor]:
            if node.keeper is None and node.postmaster_pid() is None:
                continue
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                self._autoctl("stop", "--pgdata", str(node.pgdata), timeout=60)
            if node.keeper is not None:
                try:
                    node.keeper.wait(60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.keeper.pid, signal.SIGKILL)
                    node.keeper.wait(30)
                node.keeper = None
            deadline = time.monotonic() + 30
            while (pid := node.postmaster_pid()) is not None:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
        for log in self._logs:
            log.close()

    # -- state -----------------------------------------------------------------------------

    def states(self) -> dict[str, tuple[str, str]]:
        """Each data node's (reported, assigned) state, as the monitor has them."""
        try:
            with psycopg.connect(self.monitor_dsn, connect_timeout=3) as conn:
                rows = conn.execute(
                    "SELECT nodename, current_group_state::text, assigned_group_state::text "
                    "FROM pgautofailover.current_state(%s)", (FORMATION,)).fetchall()
        except psycopg.Error:
            return {}
        return {name: (reported, assigned) for name, reported, assigned in rows}

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def primary(self) -> Node | None:
        """The node the monitor has as primary (or wait_primary: alone, but writable)."""
        for name, (reported, assigned) in self.states().items():
            if reported == assigned and reported in ("primary", "wait_primary", "single"):
                return self.node(name)
        return None

    def healthy(self) -> bool:
        found = sorted(r for r, a in self.states().values() if r == a)
        return found == ["primary", "secondary"]

    def wait_healthy(self, timeout: float = 120) -> None:
        self._wait(self.healthy, timeout, "a primary and a secondary")

    def create_database(self, dbname: str) -> None:
        """Create ``dbname`` on the primary (it replicates like everything else)."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def synchronous_standby_names(self) -> str:
        primary = self.primary()
        assert primary is not None
        with psycopg.connect(host=HOST, port=primary.port, user="postgres",
                             dbname="postgres") as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
        return str(row[0]) if row else ""

    def logs(self) -> str:
        parts = []
        for node in [self.monitor, *self.nodes]:
            path = self.folder / f"{node.name}.log"
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-20000:]}")
        return "\n".join(parts)

    # -- helpers -----------------------------------------------------------------------------

    def _monitor_up(self) -> bool:
        try:
            with psycopg.connect(self.monitor_dsn, connect_timeout=3):
                return True
        except psycopg.Error:
            return False

    def _env(self) -> dict[str, str]:
        # pg_autoctl keeps its configuration and state under XDG folders: ours, so that
        # several clusters (and the machine's own) never share them.
        return {
            **os.environ,
            "PATH": f"{BINDIR}{os.pathsep}{os.environ.get('PATH', '')}",
            "PG_CONFIG": str(BINDIR / "pg_config"),
            "XDG_CONFIG_HOME": str(self.folder / "config"),
            "XDG_DATA_HOME": str(self.folder / "share"),
        }

    @staticmethod
    def _as_postgres() -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _autoctl(self, *args: str, timeout: float = 180) -> None:
        result = subprocess.run(
            [*self._as_postgres(), PG_AUTOCTL, *args], env=self._env(),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"pg_autoctl {' '.join(args)} failed:\n{output}")

    def _wait(self, check: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}\n"
                                   f"{self.logs()}")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    """scripts/ha-cluster: start, state or stop a cluster in a folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="ha-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "state", "stop"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("dbname", nargs="?", default="postgres",
                        help="database in the printed DSN (created if missing)")
    args = parser.parse_args(argv)
    if args.command == "start":
        problem = available()
        if problem:
            parser.error(problem)
        if args.folder.exists() and any(args.folder.iterdir()):
            parser.error(f"{args.folder} is not empty")
        cluster = HACluster(args.folder, args.dbname)
        try:
            dsn = cluster.start()
            cluster.create_database(args.dbname)
        except BaseException:
            cluster.stop()
            raise
        print(dsn)
        return 0
    cluster = HACluster.load(args.folder)
    if args.command == "stop":
        cluster.stop()
        return 0
    for name, (reported, assigned) in sorted(cluster.states().items()):
        node = cluster.node(name)
        print(f"{name} {HOST}:{node.port} {reported} (assigned {assigned})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
