"""A private Ray head with the inference tier deployed, and a replica killer (pytest's thread).

:class:`RayHead` runs ``ray start --head --block`` in a child process that leads its own
session (no dashboard, token auth with a fresh token, its files in a short folder under /tmp:
socket paths must fit in 108 bytes), then deploys the tier with the project's own
``emotion-monitor serve-ray``. Processes that join it (ingest nodes with ``--inference
ray:HOST:PORT``) take :meth:`RayHead.env`. Stopping sends SIGTERM to the head's session,
then (after a grace period) SIGKILL to what is left of it: only the head's own processes
are in it, so no other Ray on the machine is touched (``ray stop`` would stop them all).
The whole session gets SIGTERM at once: ``ray start``'s own orderly stop takes some 30 s.

:class:`ReplicaKiller` is ``replica_killer.py`` in a child process: a Ray driver connected
ahead of time, so that the kill itself is prompt when the test asks for it (SIGUSR1).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import REPO

from .procs import OutputProcess, monitor_command, require_module

__all__ = ["RayHead", "ReplicaKiller"]

_KILLER = Path(__file__).with_name("replica_killer.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RayHead:
    """``with RayHead(cpus=2, replicas=2, timeout_s=...) as head:`` ``head.address``."""

    def __init__(self, *, cpus: int, replicas: int, cpus_per_replica: float,
                 timeout_s: float) -> None:
        require_module("ray", "'emotion-monitor[ray]'")
        self.cpus, self.replicas = cpus, replicas
        self.cpus_per_replica = cpus_per_replica
        self.timeout_s = timeout_s
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
        self.token = secrets.token_hex(16)
        self.process: OutputProcess | None = None

    @property
    def address(self) -> str:
        """The head's GCS address (``--inference ray:`` + this)."""
        return f"127.0.0.1:{self.port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: ours) plus the token auth and the repo on PYTHONPATH."""
        env = dict(os.environ if base is None else base)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def start(self) -> None:
        """Start the head and deploy the tier (bundled model); returns once it answers."""
        ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
        self.process = OutputProcess(
            [*ray_cli, "start", "--head", "--block", f"--port={self.port}",
             f"--num-cpus={self.cpus}", "--include-dashboard=false",
             f"--temp-dir={self.folder}", "--disable-usage-stats"],
            env=self.env(), log_path=self.folder / "head.log", new_session=True)
        self.process.wait_for("Ray runtime started", timeout_s=self.timeout_s)
        subprocess.run(
            monitor_command("--log-level", "WARNING", "serve-ray", "--address", self.address,
                            "--replicas", str(self.replicas),
                            "--cpus-per-replica", str(self.cpus_per_replica)),
            env=self.env(), check=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None:
            pid = self.process.pid
            self._signal_session(pid, signal.SIGTERM)  # all at once: ray start alone takes 30 s
            self.process.stop()
            self._signal_session(pid, signal.SIGKILL)
            self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _signal_session(pid: int, signum: int) -> None:
        """``signum`` to the head's process group (its session: nothing else is in it)."""
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> RayHead:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReplicaKiller:
    """A driver on ``head`` that kills one tier replica actor (no restart) on :meth:`kill`."""

    def __init__(self, head: RayHead, *, app: str = "emotion-monitor") -> None:
        self.timeout_s = head.timeout_s
        self.process = OutputProcess(
            [sys.executable, str(_KILLER), head.address, app, str(head.timeout_s)],
            env=head.env(), log_path=head.folder / "killer.log")

    def wait_ready(self) -> list[str]:
        """The replica actors it sees once connected."""
        match = self.process.wait_for(r"^replicas: (.+)$", timeout_s=self.timeout_s)
        return match.group(1).split()

    def kill(self) -> str:
        """Kill the first replica now; its actor name once Ray has it gone."""
        os.kill(self.process.pid, signal.SIGUSR1)
        return self.process.wait_for(r"^killed: (\S+)$", timeout_s=self.timeout_s).group(1)

    def stop(self) -> None:
        self.process.stop()
