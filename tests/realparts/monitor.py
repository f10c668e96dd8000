"""The monitor as a subprocess, and a WebSocket recorder (pytest's thread; asyncio for the WS).

The monitor always runs in a child process: PortAudio enumerates devices when sounddevice is
imported, so the process must start after (and in the environment of) the audio server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import REPO

from .procs import OutputProcess, monitor_command

__all__ = ["Monitor", "Recorder", "base_env", "store_windows"]

# The dashboard URL the monitor prints at start.
URL_PATTERN = r"(https?://(?:127\.0\.0\.1|localhost|\[::1\]):(\d+))/?"


def base_env(home: Path) -> dict[str, str]:
    """Environment for a monitor child process: ours, a private HOME, the repo importable."""
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Monitor:
    """``emotion-monitor run ARGS`` in a child process; ``url`` once it is listening."""

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path,
        timeout_s: float,
    ) -> None:
        self.args = list(args)
        self.timeout_s = timeout_s
        self.process = OutputProcess(
            monitor_command("run", *self.args), env=env, cwd=cwd, log_path=log_path
        )
        self.url = ""
        self.port = 0
        self.ws_url = ""

    def wait_ready(self) -> Monitor:
        """Wait for the dashboard URL on the monitor's output."""
        match = self.process.wait_for(URL_PATTERN, timeout_s=self.timeout_s)
        self.url = match.group(1)
        self.port = int(match.group(2))
        self.ws_url = self.url.replace("http", "ws", 1) + "/ws"
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.proc.poll() is None

    def stop(self) -> int:
        return self.process.stop()

    def kill(self) -> int:
        return self.process.kill()

    def output(self) -> str:
        return self.process.output()


@dataclass
class Recorder:
    """Everything one WebSocket client received, in order, as decoded JSON objects."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def windows(self) -> list[dict[str, Any]]:
        return self.of("window")

    def keys(self) -> set[tuple[str, int]]:
        """(stream, seq) of every window received."""
        return {(m["stream"], int(m["seq"])) for m in self.windows()}

    def session(self) -> str:
        """The server run's id, from the first hello."""
        return str(self.of("hello")[0]["session"])

    async def run(self, ws_url: str, *, on_open: Callable[[], None] | None = None,
                  headers: Mapping[str, str] | None = None) -> None:
        """Receive until the server closes the connection (or the task is cancelled).

        ``headers``: extra handshake headers (e.g. ``Authorization`` with a view token).
        """
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        async with connect(ws_url, max_size=None, open_timeout=None,
                           additional_headers=headers) as ws:
            if on_open is not None:
                on_open()
            try:
                async for frame in ws:
                    self.messages.append(json.loads(frame))
                    self.changed.set()
            except ConnectionClosed:
                pass
        self.closed = True
        self.changed.set()

    async def wait_for(
        self, condition: Callable[[Recorder], bool], *, timeout_s: float, what: str
    ) -> None:
        """Wait (on the 'changed' event, with a deadline) until ``condition(self)`` holds."""
        async def loop() -> None:
            while not condition(self):
                if self.closed:
                    raise AssertionError(f"connection closed while waiting for {what}")
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout_s)
        except asyncio.TimeoutError:
            kinds = [m.get("type") for m in self.messages]
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}; received types: {kinds}"
            ) from None


def store_windows(path: Path, *, session: str | None = None) -> set[tuple[str, int]]:
    """(stream, seq) of every window event in a timeline store, read with the stdlib sqlite3.

    With ``session``, only that server run's windows (when the store records sessions).

    Opens the file the way any tool would after a crash (SQLite replays the WAL).
    Finds the table by its columns rather than by name so the test does not pin the schema:
    a table with ``stream`` and ``seq`` columns (and a ``type`` column, when events of all kinds
    share one table), or JSON payloads in a column named ``payload``/``json``/``data``/``message``.
    """
    assert path.is_file(), f"store {path} does not exist"
    conn = sqlite3.connect(path, timeout=5)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        found: set[tuple[str, int]] = set()
        matched = False
        for table in tables:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            if "stream" in cols and "seq" in cols:
                matched = True
                clauses: list[str] = []
                params: list[str] = []
                for type_col in ("type", "kind", "event"):
                    if type_col in cols:
                        clauses.append(f"\"{type_col}\" = 'window'")
                        break
                if session is not None and "session" in cols:
                    clauses.append("session = ?")
                    params.append(session)
                where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
                query = f'SELECT stream, seq FROM "{table}"{where}'
                for stream, seq in conn.execute(query, params):
                    if seq is not None:
                        found.add((str(stream), int(seq)))
                continue
            for payload_col in ("payload", "json", "data", "message"):
                if payload_col in cols:
                    matched = True
                    for (raw,) in conn.execute(f'SELECT "{payload_col}" FROM "{table}"'):
                        body = json.loads(raw)
                        if body.get("type") == "window" and (
                            session is None or body.get("session", session) == session
                        ):
                            found.add((str(body["stream"]), int(body["seq"])))
                    break
        assert matched, f"no table with window events in {path}: tables {tables}"
        return found
    finally:
        conn.close()
