"""The clients against the real monitor: `run --source FILE` with the bundled model, end to end."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
import soundfile as sf
from conftest import TIMEOUT_S
from test_log import start_command, wait_for_line

from client.api import EventClient
from streamer.protocol.messages import Hello, StreamCloseMessage, WindowMessage
from streamer.protocol.timeline import read_timeline, row_key
from streamer.testing import speech_like


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    """Two speech-like bursts with a pause between them, as a 16 kHz WAV file."""
    audio = np.concatenate(
        [speech_like(3.0), np.zeros(16000, dtype=np.float32), speech_like(2.5, seed=1)]
    )
    path = tmp_path / "call.wav"
    sf.write(path, audio, 16000)
    return path


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """SIGTERM a command and collect its exit code and remaining output."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def exited(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for a command that ends by itself (no signal: a signal would race its own exit)."""
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_watch_log_and_api_follow_a_file_streamed_by_run(speech_wav: Path, tmp_path: Path) -> None:
    """A file through `run` reaches the API, `log` and `watch` complete, in order, once each."""
    out = tmp_path / "timeline.jsonl"

    async def main() -> None:
        procs: list[asyncio.subprocess.Process] = []
        try:
            run = await start_command(
                "run", "--source", str(speech_wav), "--port", "0", "--no-store"
            )
            procs.append(run)
            assert run.stdout is not None
            seen_run: list[str] = []
            dashboard = (await wait_for_line(run.stdout, r"^dashboard: ", seen_run)).split()[1]
            ws_url = (await wait_for_line(run.stdout, r"^events: ", seen_run)).split()[1]

            log = await start_command("--log-level", "DEBUG", "log", ws_url, "--out", str(out))
            watch = await start_command("watch", ws_url, "--no-reconnect")
            procs += [log, watch]

            # the API: hello, then every window of the file (live or from the backlog) in order
            windows: list[WindowMessage] = []
            session = ""
            async with asyncio.timeout(TIMEOUT_S), EventClient(ws_url, reconnect=False) as api:
                async for event in api.events():
                    if isinstance(event, Hello):
                        session = event.session
                    elif isinstance(event, WindowMessage):
                        windows.append(event)
                    elif isinstance(event, StreamCloseMessage) and event.stream == "call":
                        break
            assert windows, "no windows for the speech file"
            assert [w.seq for w in windows] == list(range(len(windows)))
            assert all(w.stream == "call" for w in windows)
            assert all(a.end_s <= b.end_s for a, b in zip(windows, windows[1:], strict=False))
            last = windows[-1].seq

            assert log.stderr is not None and watch.stdout is not None
            await wait_for_line(log.stderr, rf"wrote {session} call#{last}\b", [])
            watch_lines: list[str] = []
            await wait_for_line(watch.stdout, rf"^window call #{last} ", watch_lines)

            # the dashboard of the same server
            page = await asyncio.to_thread(lambda: urlopen(dashboard, timeout=TIMEOUT_S).read())
            assert b'id="current-label"' in page

            code, _, _ = await stop(run)
            assert code == 0
            code, watch_out, _ = await exited(watch)  # by itself: the server said 1001
            assert code == 0
            code, _, log_err = await stop(log)
            assert code == 0, log_err
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

        lines = watch_lines + watch_out.splitlines(keepends=True)
        assert lines[0].startswith(f"hello session={session} model=bundled ")
        shown = [
            int(m.group(1)) for m in map(re.compile(r"^window call #(\d+) ").match, lines) if m
        ]
        assert shown == list(range(last + 1))
        assert any(line.startswith("speech_start call ") for line in lines)
        assert lines[-1].startswith("disconnected: server closed the connection (1001")
        rows = read_timeline(out)
        assert [row_key(row) for row in rows] == [(session, "call", w.seq) for w in windows]
        assert [row["smoothed_label"] for row in rows] == [w.smoothed_label for w in windows]
        assert f"{len(windows)} rows written, 0 duplicates skipped" in log_err

    asyncio.run(main())
