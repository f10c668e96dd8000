"""Crash safety: the SQLite store holds every window a client had received, even after SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TIMEOUT_S

from .monitor import Monitor, Recorder, base_env, store_windows
from .procs import OutputProcess, monitor_command, wait_until

pytestmark = pytest.mark.slow

# Windows to see before stopping the server: enough to be mid-run, well before the file ends.
WINDOWS_BEFORE_STOP = 4


def logged_windows(path: Path, session: str) -> set[tuple[str, int]]:
    """(stream, seq) of the rows an ``emotion-monitor log`` JSONL file holds for a session."""
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["stream"], int(r["seq"])) for r in rows if r["session"] == session}


def start_logger(monitor: Monitor, out: Path, tmp_path: Path) -> OutputProcess:
    """``emotion-monitor log URL --out FILE`` as a subprocess."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return OutputProcess(
        monitor_command("log", monitor.ws_url, "--out", str(out)),
        env=base_env(home), cwd=REPO, log_path=tmp_path / f"log-{out.stem}.log",
    )


async def receive_then(
    monitor: Monitor, stop: Any, *, windows: int = WINDOWS_BEFORE_STOP
) -> Recorder:
    """Record the event stream; after ``windows`` windows call ``stop()`` and keep reading
    until the connection ends. Returns everything received."""
    recorder = Recorder()
    task = asyncio.create_task(recorder.run(monitor.ws_url))
    try:
        await recorder.wait_for(lambda r: len(r.windows()) >= windows, timeout_s=TIMEOUT_S * 2,
                                what=f"{windows} windows")
        stop()
        await asyncio.wait_for(task, TIMEOUT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return recorder


def test_sigkill_loses_no_window_a_client_received(
    start_monitor: Any, speech_wav: Path, tmp_path: Path
) -> None:
    """After SIGKILL mid-run the store opens and holds every window the clients had received."""
    store = tmp_path / "timeline.sqlite3"
    monitor = start_monitor(["--source", str(speech_wav), "--port", "0", "--store", str(store)])
    rows = tmp_path / "rows.jsonl"
    with start_logger(monitor, rows, tmp_path) as logger:
        recorder = asyncio.run(receive_then(monitor, monitor.kill))
        assert monitor.process.proc.returncode == -signal.SIGKILL
        # Whatever the logger wrote came from the server before it died.
        logger.stop()
    received = recorder.keys()
    session = recorder.session()
    stored = store_windows(store, session=session)
    assert len(received) >= WINDOWS_BEFORE_STOP
    assert received - stored == set(), f"received but not stored: {sorted(received - stored)}"
    logged = logged_windows(rows, session)
    assert logged - stored == set(), f"logged but not stored: {sorted(logged - stored)}"


def test_sigterm_loses_nothing(start_monitor: Any, speech_wav: Path, tmp_path: Path) -> None:
    """A graceful SIGTERM stop: store, live client and logger hold exactly the same windows."""
    store = tmp_path / "timeline.sqlite3"
    monitor = start_monitor(["--source", str(speech_wav), "--port", "0", "--store", str(store)])
    rows = tmp_path / "rows.jsonl"
    with start_logger(monitor, rows, tmp_path) as logger:
        # The logger's first row: it is connected and writing before the server stops.
        wait_until(lambda: rows.exists() and rows.stat().st_size > 0, timeout_s=TIMEOUT_S * 2,
                   what="the logger's first row")
        recorder = asyncio.run(
            receive_then(monitor, lambda: monitor.process.proc.send_signal(signal.SIGTERM))
        )
        code = monitor.process.wait_exit(timeout_s=TIMEOUT_S)
        logger.stop()
    assert code == 0, monitor.output()
    assert "Traceback" not in "\n".join(monitor.process.stderr), monitor.output()
    session = recorder.session()
    received = recorder.keys()
    stored = store_windows(store, session=session)
    assert len(received) >= WINDOWS_BEFORE_STOP
    assert received == stored, (
        f"received only: {sorted(received - stored)}; stored only: {sorted(stored - received)}"
    )
    assert logged_windows(rows, session) == stored
