"""A private PostgreSQL server from Debian's package binaries for the store tests (pytest's thread).

``initdb`` refuses to run as root, so as root the server runs as an unprivileged user (Debian's
``postgres`` when its package made one, else ``nobody``) through ``runuser``. Its data folder,
password file, log and unix socket live in a fresh folder under /tmp (short: a socket path must
fit in 108 bytes) that the user owns. It listens on 127.0.0.1 on a free port and asks every
connection for a scram-sha-256 password. fsync is off: a crash of the test machine only loses
a test database. :meth:`PostgresServer.stop` and :meth:`PostgresServer.start` take the server
away and bring it back on the same port and data (a database going away mid-run).

The binaries come from the Debian package ``postgresql`` (``.ci/install`` installs it; no system
service is started): without them the tests skip, and fail in CI (env ``CI`` set).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from tests.realparts.procs import require_or_fail

__all__ = ["PostgresServer", "postgres_binaries"]


def postgres_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` folder; skip (fail in CI) when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if
                   Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        require_or_fail("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not "
                        "found: install the Debian package 'postgresql'")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    require_or_fail("running as root, and neither a 'postgres' nor a 'nobody' user exists")
    return None


class PostgresServer:
    """One private server: ``with PostgresServer(timeout_s=...) as server: server.url("db")``."""

    user = "monitor"

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.bin = postgres_binaries()
        self.run_as = _server_user()
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.running = False

    def _command(self, *argv: str) -> list[str]:
        prefix = [] if self.run_as is None else ["runuser", "-u", self.run_as, "--"]
        return [*prefix, *argv]

    def _run(self, *argv: str) -> None:
        result = subprocess.run(self._command(*argv), capture_output=True, text=True,
                                timeout=self.timeout_s, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self.log()}")

    def setup(self) -> None:
        """initdb: a cluster whose superuser ``monitor`` has :attr:`password`."""
        password_file = self.folder / "pw"
        password_file.write_text(self.password + "\n")
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o700)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                  f"--pwfile={password_file}", "--auth=scram-sha-256", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        password_file.unlink()

    def start(self) -> None:
        """Start (or restart) the server on its port; returns once it accepts connections."""
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                   "-c fsync=off -c max_connections=40")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.folder / "log"), "-w", "-t", str(int(self.timeout_s)),
                  "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: like a crash)."""
        if self.running:
            self.running = False
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                      "-t", str(int(self.timeout_s)), "stop")

    def url(self, dbname: str = "postgres", *, password: bool = False) -> str:
        """A ``postgresql://`` URL of a database here (the password in it only if asked)."""
        secret = f":{quote(self.password, safe='')}" if password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL (without the password)."""
        import psycopg

        with psycopg.connect(self.url(), password=self.password, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return (self.folder / "log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (as a crash would: nothing here is kept) and remove its folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.setup()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
