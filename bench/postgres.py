"""A throwaway PostgreSQL server for the benchmarks: Debian's ``postgresql`` package, a fresh cluster in
a work directory, loopback TCP on a free port, a ``prefect`` database; stopped and removed on exit.

    with ThrowawayPostgres(work, install=True) as pg:
        LocalPrefectServer(work / "prefect", database_url=pg.url)

Durability is off (fsync, synchronous_commit, full_page_writes): the data is gone afterwards anyway.
PostgreSQL refuses to run as root; as root, the cluster belongs to the ``postgres`` system user (the
one the package creates; made here if missing) and initdb/pg_ctl run through ``runuser -u postgres --``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

PG_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "postgres"
DATABASE = "prefect"
USER = "policyflow"
INSTALL_HINT = ("PostgreSQL not found (no /usr/lib/postgresql/<version>/bin/pg_ctl): install it with "
                "`sudo apt-get install -y postgresql`, or pass --install-postgres")
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: no socket path-length or /var/run permission troubles
    "max_connections": "200",  # a Prefect server's pool (5 + 10 overflow) per worker, plus its services
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl; else wherever ``pg_ctl``
    on PATH really lives (the ``/usr/local/bin`` entries on some images are symlinks into the former)."""
    candidates = sorted((p / "bin" for p in PG_ROOT.glob("*") if p.is_dir()), key=lambda b: _version(b.parent),
                        reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def install_postgresql() -> None:
    """``apt-get install postgresql`` (Debian/Ubuntu), through sudo when not root."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("PostgreSQL not found and there is no apt-get here: install PostgreSQL by hand")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    print("installing PostgreSQL: apt-get install -y postgresql", file=sys.stderr, flush=True)
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        subprocess.run([*prefix, *env, *command], check=True, stdout=subprocess.DEVNULL)


class ThrowawayPostgres:
    """One PostgreSQL cluster for the life of a ``with`` block; ``.url`` is the Prefect database."""

    def __init__(self, workdir: Path, *, install: bool = False, port: int | None = None) -> None:
        self.workdir = workdir
        self.install = install
        self.port = port or _free_port()
        self.password = secrets.token_hex(16)
        self.startup_seconds = 0.0
        self.root: Path | None = None  # the cluster's directory: data/, postgres.log, pwfile
        self._bindir: Path | None = None
        self._as_root = os.geteuid() == 0
        self._started = False

    @property
    def url(self) -> str:
        """The ``prefect`` database, for ``PREFECT_SERVER_DATABASE_CONNECTION_URL``."""
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Another empty database in the same cluster (e.g. one per Prefect server); its URL."""
        self._run(self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name, as_owner=False)
        return self.database_url(name)

    @property
    def data(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "postgres.log"

    def _bin(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _run(self, *command: str, as_owner: bool = True, timeout: float = 120.0) -> None:
        """Run ``command``; as the cluster's owner (the postgres user) when we are root."""
        argv = ["runuser", "-u", RUN_AS, "--", *command] if as_owner and self._as_root else list(command)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              cwd="/", env={**os.environ, "PGPASSWORD": self.password, "LC_ALL": "C.UTF-8"})
        if done.returncode != 0:
            tail = ""
            if self.root is not None and self.log_path.exists():
                tail = "\n--- postgres.log ---\n" + self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}{tail}")

    def _owner_dir(self) -> Path:
        """The cluster's directory, owned by whoever runs the server. As root: ``<workdir>/postgres``
        when the postgres user can reach it, else a directory of its own under the temp dir."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = self.workdir / "postgres"
        root.mkdir()
        if not self._as_root:
            return root
        try:
            owner = pwd.getpwnam(RUN_AS)
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--shell", "/usr/sbin/nologin", RUN_AS], check=True)
            owner = pwd.getpwnam(RUN_AS)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        reachable = subprocess.run(["runuser", "-u", RUN_AS, "--", "test", "-w", str(root)],
                                   check=False).returncode == 0
        if not reachable:  # e.g. workdir made by mkdtemp (0700, root's)
            root.rmdir()
            root = Path(tempfile.mkdtemp(prefix="policyflow-pg-"))
            os.chown(root, owner.pw_uid, owner.pw_gid)
        return root

    def start(self) -> ThrowawayPostgres:
        started = time.monotonic()
        self._bindir = find_bindir()
        if self._bindir is None and self.install:
            install_postgresql()
            self._bindir = find_bindir()
        if self._bindir is None:
            raise RuntimeError(INSTALL_HINT)
        self.root = self._owner_dir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            owner = pwd.getpwnam(RUN_AS)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            self._run(self._bin("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
            pwfile.unlink()
            with (self.data / "postgresql.conf").open("a") as conf:  # appending keeps the owner
                conf.write("\n# ThrowawayPostgres\n")
                conf.writelines(f"{key} = {value}\n" for key, value in {**SETTINGS, "port": str(self.port)}.items())
            self._run(self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start")
            self._started = True
            self.create_database(DATABASE)  # a client: no particular OS user, only the password
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._run(self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run(self._bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
