"""The timeline logger: real event server restarts, dedupe, resume, and the ``log`` command."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import REPO, TIMEOUT_S, TINY_LABELS
from test_client_api import hello, real_server, window

from client.api import ClientEvent, EventClient
from client.errors import ClientError
from client.log import TimelineLogger
from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import Hello, WindowMessage
from streamer.protocol.timeline import read_timeline, row_key


def keys(path: Path) -> list[tuple[str, str, int]]:
    """The (session, stream, seq) of every row of a timeline file, in file order."""
    return [row_key(row) for row in read_timeline(path)]


def expected(session: str, seqs: range) -> list[tuple[str, str, int]]:
    """Keys of windows ``seqs`` of stream mic in ``session``."""
    return [(session, "mic", seq) for seq in seqs]


async def log_until(
    events: AsyncIterator[ClientEvent], timeline: TimelineLogger, last: tuple[str, str, int]
) -> None:
    """Feed every event to the logger until the window named ``last`` has been handled."""
    async with asyncio.timeout(TIMEOUT_S):
        async for event in events:
            timeline.handle(event)
            if isinstance(event, WindowMessage):
                if (timeline.session, event.stream, event.seq) == last:
                    return
    raise AssertionError(f"events ended before window {last}")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_log_survives_server_restarts_without_duplicates(tmp_path: Path, suffix: str) -> None:
    """Across restarts and a resent backlog every window is written exactly once, in order."""
    out = tmp_path / f"timeline{suffix}"

    async def main() -> TimelineLogger:
        with TimelineLogger(out) as timeline:
            async with real_server("run1", windows=[window(i) for i in range(5)]) as (hub, srv):
                port = srv.port
                client = EventClient(srv.ws_url, backoff_initial_s=0.02, backoff_max_s=0.2)
                events = client.events()
                await log_until(events, timeline, ("run1", "mic", 4))  # the backlog
                for seq in (5, 6):
                    hub.publish(window(seq))
                await log_until(events, timeline, ("run1", "mic", 6))  # live
            # the same run answers again and resends its backlog (3-6 were written already)
            async with real_server("run1", port=port, windows=[window(i) for i in range(3, 10)]):
                await log_until(events, timeline, ("run1", "mic", 9))
            # a real restart: a new session whose sequence numbers start over
            async with real_server("run2", port=port, windows=[window(i) for i in range(3)]):
                await log_until(events, timeline, ("run2", "mic", 2))
                await client.close()
                await events.aclose()
            return timeline

    timeline = asyncio.run(main())
    assert keys(out) == expected("run1", range(10)) + expected("run2", range(3))
    assert timeline.rows_written == 13
    assert timeline.duplicates_skipped == 4
    rows = read_timeline(out)
    assert rows[0]["p_Happy"] == pytest.approx(0.7)
    assert rows[1]["smoothed_label"] == "Happy" and rows[0]["smoothed_label"] == "uncertain"


def test_a_restarted_logger_resumes_from_its_file(tmp_path: Path) -> None:
    """A new logger on an existing file reads it back and appends only unseen windows."""
    out = tmp_path / "timeline.csv"

    async def run(seqs: range, last: int) -> TimelineLogger:
        with TimelineLogger(out) as timeline:
            async with real_server("run1", windows=[window(i) for i in seqs]) as (_, srv):
                async with EventClient(srv.ws_url, reconnect=False) as client:
                    await log_until(client.events(), timeline, ("run1", "mic", last))
            return timeline

    first = asyncio.run(run(range(4), 3))
    second = asyncio.run(run(range(6), 5))
    assert (first.rows_written, second.rows_written, second.duplicates_skipped) == (4, 2, 4)
    assert keys(out) == expected("run1", range(6))


def test_a_server_with_other_labels_is_refused(tmp_path: Path) -> None:
    """A timeline is never extended with another model's columns: ClientError, file intact."""
    out = tmp_path / "timeline.jsonl"
    with TimelineLogger(out) as timeline:
        timeline.handle(
            Hello(
                session="a",
                model="m",
                labels=TINY_LABELS,
                window_s=2.0,
                hop_s=0.5,
                sample_rate_hz=16000,
            )
        )
        timeline.handle(window(0))
    before = out.read_text()
    with TimelineLogger(out) as timeline, pytest.raises(ClientError, match="differ"):
        timeline.handle(
            Hello(
                session="b",
                model="m",
                labels=("x", "y"),
                window_s=2.0,
                hop_s=0.5,
                sample_rate_hz=16000,
            )
        )
    assert out.read_text() == before


@pytest.mark.parametrize(
    ("name", "needle"),
    [("timeline.txt", "unsupported timeline file suffix"), ("missing/t.csv", "does not exist")],
)
def test_bad_out_paths_are_client_errors(tmp_path: Path, name: str, needle: str) -> None:
    """An unsupported suffix or a missing folder fails before connecting, naming the path."""
    with pytest.raises(ClientError, match=needle):
        TimelineLogger(tmp_path / name).open()


def test_a_file_that_is_not_a_timeline_is_a_client_error(tmp_path: Path) -> None:
    """The timeline format's TimelineError reaches the logger's caller as a ClientError."""
    out = tmp_path / "timeline.jsonl"
    out.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ClientError, match="not a JSON row") as info:
        TimelineLogger(out).open()
    assert isinstance(info.value.__cause__, TimelineError)
    assert out.read_text(encoding="utf-8") == "not json\n"


# -- the command ---------------------------------------------------------------------------


def command(*args: str) -> list[str]:
    """The ``emotion-monitor`` command line, run by this Python from the work tree."""
    return [sys.executable, "-m", "server", *args]


async def start_command(*args: str) -> asyncio.subprocess.Process:
    """Start ``emotion-monitor ARGS`` with pipes for stdout and stderr."""
    return await asyncio.create_subprocess_exec(
        *command(*args),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def wait_for_line(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> str:
    """Read lines until one matches ``pattern``; every line read is appended to ``seen``."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"no line matching {pattern!r}; got:\n" + "".join(seen))
            line = raw.decode()
            seen.append(line)
            if re.search(pattern, line):
                return line


def test_log_command_keeps_going_across_a_restart_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`log` rides out a server restart without duplicates; SIGTERM exits 0 with all rows."""
    out = tmp_path / "timeline.csv"

    async def main() -> tuple[int, str]:
        seen: list[str] = []
        proc: asyncio.subprocess.Process | None = None
        try:
            async with real_server("run1", windows=[window(i) for i in range(5)]) as (_, srv):
                port = srv.port
                proc = await start_command(
                    "--log-level",
                    "DEBUG",
                    "log",
                    srv.ws_url,
                    "--out",
                    str(out),
                    "--backoff-initial-s",
                    "0.02",
                    "--backoff-max-s",
                    "0.2",
                )
                assert proc.stderr is not None
                await wait_for_line(proc.stderr, r"wrote run1 mic#4\b", seen)
            # the server is gone; it comes back on the same port and resends 2-4 with 5-7
            async with real_server("run1", port=port, windows=[window(i) for i in range(2, 8)]):
                await wait_for_line(proc.stderr, r"wrote run1 mic#7\b", seen)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT_S):
                _, err = await proc.communicate()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, "".join(seen) + err.decode()

    code, stderr = asyncio.run(main())
    assert code == 0, stderr
    assert keys(out) == expected("run1", range(8))
    assert "8 rows written, 3 duplicates skipped" in stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["log", "ws://127.0.0.1:1/ws", "--out", "timeline.txt"], "unsupported timeline file"),
        (["log", "ftp://127.0.0.1/ws", "--out", "timeline.csv"], "bad URL"),
        (["watch", "ftp://127.0.0.1/ws"], "bad URL"),
        (["watch", "ws://127.0.0.1:99999/ws"], "out of range"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """A bad URL or --out suffix: exit code 2 and a single line on stderr naming the problem."""
    result = subprocess.run(
        command(*args),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert lines[0].startswith(f"emotion-monitor {args[0]}: error:")
    assert not (tmp_path / "timeline.csv").exists()


def test_a_reused_stream_name_is_not_mistaken_for_a_resent_window(tmp_path: Path) -> None:
    """Same key, other wall time (a stream reopened in one run): written, not dropped."""
    out = tmp_path / "timeline.csv"
    reopened = dataclasses.replace(window(0), wall_time=window(0).wall_time + 60.0)
    with TimelineLogger(out) as timeline:
        timeline.handle(hello("run1"))
        assert timeline.handle(window(0))
        assert not timeline.handle(window(0))  # resent: the very same window
        assert timeline.handle(reopened)
    assert (timeline.duplicates_skipped, timeline.key_collisions) == (1, 1)
    with TimelineLogger(out) as timeline:  # read back: both are known, neither is written again
        timeline.handle(hello("run1"))
        assert not timeline.handle(window(0)) and not timeline.handle(reopened)
    assert [row["wall_time"] for row in read_timeline(out)] == [1.7e9, 1.7e9 + 60.0]


def test_a_torn_last_row_is_cut_before_appending(tmp_path: Path) -> None:
    """A row cut short by a crash is dropped, so new rows start on a line of their own."""
    out = tmp_path / "timeline.csv"
    with TimelineLogger(out) as timeline:
        timeline.handle(hello("run1"))
        timeline.handle(window(0))
    with out.open("a") as handle:
        handle.write("run1,mic,1,0.5,2.5,Hap")  # the crash
    with TimelineLogger(out) as timeline:
        timeline.handle(hello("run1"))
        assert not timeline.handle(window(0)) and timeline.handle(window(1))
    assert keys(out) == expected("run1", range(2))
