"""The async client API against a real WebSocket server on 127.0.0.1 port 0.

``real_server`` is the project's own event server (``server.app.EventServer`` with an
``EventHub``), fed wire messages directly. Where the real server cannot produce a case on
demand (a connection closed mid-run, a bad frame), a small stand-in server is the outer edge: real
websockets, speaking the protocol through ``streamer.protocol.messages.encode``. It is shared with
``test_log.py`` and ``test_watch.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

import pytest
from conftest import TIMEOUT_S, TINY_LABELS
from websockets.asyncio.server import Server, ServerConnection, serve

from client.api import Disconnected, EventClient, backoff_delays, events, normalize_url
from client.errors import ClientError
from server.app import EventServer
from server.config import ServerConfig
from server.hub import EventHub, ModelInfo
from streamer.protocol.errors import ProtocolError
from streamer.protocol.limits import EVENTS_PATH, INGEST_PATH
from streamer.protocol.messages import (
    Hello,
    Message,
    StatsMessage,
    StreamInfo,
    StreamOpenMessage,
    Subscribe,
    WindowMessage,
    decode,
    encode,
)
from streamer.protocol.urls import UrlError, endpoint_url, events_url, ingest_url

Frame = Message | str  # a str is sent verbatim (to send bad frames)


def hello(session: str, streams: Sequence[str] = ("mic",)) -> Hello:
    """A Hello of the tiny model's labels."""
    return Hello(
        session=session,
        model="tiny",
        labels=TINY_LABELS,
        window_s=2.0,
        hop_s=0.5,
        sample_rate_hz=16000,
        streams=tuple(StreamInfo(s, 16000) for s in streams),
    )


def window(seq: int, stream: str = "mic", label: str = "Happy") -> WindowMessage:
    """Window ``seq`` of a stream, with ``label`` most likely."""
    probabilities = {name: (0.7 if name == label else 0.1) for name in TINY_LABELS}
    return WindowMessage(
        stream=stream,
        seq=seq,
        start_s=seq * 0.5,
        end_s=seq * 0.5 + 2.0,
        wall_time=1.7e9 + seq * 0.5,
        probabilities=probabilities,
        label=label,
        confidence=0.7,
        smoothed_label=label if seq % 3 else "uncertain",
        smoothed_confidence=0.6,
    )


class StandInServer:
    """A scripted ``/ws`` server: connection i gets ``scripts[i]`` and is then closed (1001).

    The connection after the last script stays open, sends nothing and sets ``exhausted``
    (after the client's first frame, with ``wait_for_frame``):
    by then the client has consumed every earlier connection to its end, so the test knows
    what the client has seen without waiting on a clock.
    """

    def __init__(
        self, scripts: Sequence[Sequence[Frame]], *, port: int = 0, wait_for_frame: bool = False
    ) -> None:
        self.scripts = [list(script) for script in scripts]
        self.wait_for_frame = wait_for_frame
        self.port = port
        self.exhausted = asyncio.Event()
        self.received: list[Message] = []
        self.connections = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The events URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _handler(self, connection: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        if index >= len(self.scripts):
            if not self.wait_for_frame:
                self.exhausted.set()
            async for frame in connection:
                self.received.append(decode(frame))
                self.exhausted.set()
            return
        for frame in self.scripts[index]:
            await connection.send(frame if isinstance(frame, str) else encode(frame))
        await connection.close(1001, "script done")

    async def __aenter__(self) -> StandInServer:
        self._server = await serve(self._handler, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def real_server(
    session: str, *, port: int = 0, windows: Sequence[WindowMessage] = ()
) -> AsyncIterator[tuple[EventHub, EventServer]]:
    """The project's event server and hub on 127.0.0.1 (port 0 = any free one).

    ``windows`` are published before any client connects, so clients get them as the backlog.
    """
    info = ModelInfo(name="tiny", labels=TINY_LABELS, window_s=2.0, hop_s=0.5, sample_rate_hz=16000)
    config = ServerConfig(port=port, store_path=None, shutdown_timeout_s=TIMEOUT_S)
    async with EventHub(info, session=session) as hub, EventServer(config, hub) as server:
        hub.publish(StreamOpenMessage(stream="mic", sample_rate_hz=16000, wall_time=1.7e9))
        for message in windows:
            hub.publish(message)
        yield hub, server


async def collect(client: EventClient, server: StandInServer) -> list[object]:
    """Every event the client yields until the server's scripts are exhausted."""
    seen: list[object] = []

    async def consume() -> None:
        async for event in client.events():
            seen.append(event)

    async with asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as group:
        group.create_task(consume())
        await server.exhausted.wait()
        await client.close()
    return seen


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:8765/ws", "ws://127.0.0.1:8765/ws"),
        ("wss://example.org/ws", "wss://example.org/ws"),
        ("http://127.0.0.1:8765", "ws://127.0.0.1:8765/ws"),
        ("https://host:9/", "wss://host:9/ws"),
        ("http://host:9/custom", "ws://host:9/custom"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/ws"),
    ],
)
def test_normalize_url_accepts_ws_and_converts_http(url: str, expected: str) -> None:
    """ws(s) URLs pass; http(s) becomes ws(s); /ws is added when there is no path."""
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://host/ws", "scheme must be"),
        ("127.0.0.1:8765", "scheme must be"),
        ("", "empty URL"),
        ("ws:///ws", "no host"),
        ("ws://host:99999/ws", "[Pp]ort"),
    ],
)
def test_bad_urls_are_client_errors(url: str, needle: str) -> None:
    """A URL that cannot name a WebSocket endpoint is a ClientError naming the problem."""
    with pytest.raises(ClientError, match=needle):
        EventClient(url)


def test_protocol_urls_are_pure_and_raise_protocol_errors() -> None:
    """The protocol's normaliser fills each endpoint's path; bad URLs are UrlErrors."""
    assert events_url("https://h:9") == "wss://h:9" + EVENTS_PATH
    assert ingest_url("http://h:9/") == "ws://h:9" + INGEST_PATH
    assert endpoint_url("ws://h/x?a=1#frag", default_path="/y") == "ws://h/x?a=1"
    with pytest.raises(UrlError, match="no host") as info:
        ingest_url("ws:///")
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    """Delays double from the initial one, stop at the cap and are jittered to 50-100%."""
    delays = backoff_delays(0.5, 4.0, 6, seed=1)
    for delay, base in zip(delays, (0.5, 1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
        assert base * 0.5 <= delay <= base


def test_events_are_decoded_in_order_and_bad_frames_skipped() -> None:
    """Messages arrive decoded and in order; bad frames are logged, counted and skipped."""
    script: list[Frame] = [hello("s1"), window(0), "{not json", '{"type":"nope","v":1}', window(1)]

    async def main() -> tuple[list[object], int]:
        async with StandInServer([script]) as server:
            async with EventClient(server.url, backoff_initial_s=0.01) as client:
                seen = await collect(client, server)
                return seen, client.bad_frames

    seen, bad = asyncio.run(main())
    messages = [event for event in seen if not isinstance(event, Disconnected)]
    assert messages == [hello("s1"), window(0), window(1)]
    assert bad == 2


def test_subscribe_is_sent_and_other_streams_are_filtered() -> None:
    """With streams given the client sends Subscribe and drops other streams' events."""
    stats = StatsMessage(
        wall_time=1.0,
        lag_s=0.1,
        windows_done=2,
        windows_dropped=0,
        blocks_dropped=0,
        input_overflows=0,
        clients=1,
        client_messages_dropped=0,
    )
    script: list[Frame] = [
        hello("s1", ("a", "b")),
        window(0, "a"),
        window(0, "b"),
        stats,
        window(1, "a"),
    ]

    async def main() -> tuple[list[object], list[Message]]:
        async with StandInServer([script], wait_for_frame=True) as server:
            async with EventClient(server.url, streams=["a"], backoff_initial_s=0.01) as client:
                seen = await collect(client, server)
            return seen, server.received

    seen, received = asyncio.run(main())
    windows = [event for event in seen if isinstance(event, WindowMessage)]
    assert windows == [window(0, "a"), window(1, "a")]
    assert stats in seen
    assert Subscribe(streams=("a",)) in received


def test_reconnects_after_a_server_restart_and_yields_the_new_hello() -> None:
    """A server restart on the same port: Disconnected, then the new session's Hello."""

    async def main() -> list[object]:
        first = StandInServer([[hello("s1"), window(0)]])
        async with first:
            port = first.port
            client = EventClient(first.url, backoff_initial_s=0.01, backoff_max_s=0.1)
            seen: list[object] = []

            async def consume() -> None:
                async for event in client.events():
                    seen.append(event)

            async with asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as group:
                group.create_task(consume())
                await first.exhausted.wait()
                await first.__aexit__(None, None, None)  # the server goes away
                async with StandInServer([[hello("s2"), window(0)]], port=port) as second:
                    await second.exhausted.wait()
                    await client.close()
            return seen

    seen = asyncio.run(main())
    hellos = [event.session for event in seen if isinstance(event, Hello)]
    assert hellos == ["s1", "s2"]
    assert isinstance(seen[2], Disconnected)
    first_s2 = next(i for i, e in enumerate(seen) if isinstance(e, Hello) and e.session == "s2")
    assert isinstance(seen[first_s2 - 1], Disconnected)
    assert seen[first_s2 + 1] == window(0)


def test_without_reconnect_a_refused_connection_is_a_client_error() -> None:
    """reconnect=False: a server that is not there is a ClientError naming the URL."""

    async def main() -> str:
        async with StandInServer([]) as server:
            url = server.url
        async with EventClient(url, reconnect=False) as client:
            with pytest.raises(ClientError, match="cannot connect") as info:
                async for _ in client.events():
                    pass
        return f"{info.value} {url}"

    text = asyncio.run(main())
    assert text.split()[-1] in text.split(" ", 1)[1]


def test_one_shot_events_helper_ends_when_the_server_closes() -> None:
    """events(url, reconnect=False) yields the messages, then one final Disconnected."""

    async def main() -> list[object]:
        async with StandInServer([[hello("s1"), window(0), window(1)]]) as server:
            return [event async for event in events(server.url, reconnect=False)]

    seen = asyncio.run(main())
    assert seen[:3] == [hello("s1"), window(0), window(1)]
    assert len(seen) == 4
    last = seen[3]
    assert isinstance(last, Disconnected) and last.retry_in_s is None
    assert "1001" in last.reason


def test_client_modules_import_no_heavy_packages() -> None:
    """Importing the client loads no torch, numpy or server, and of streamer only the protocol."""
    code = (
        "import sys, client.api, client.watch, client.log, client.cli\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'sounddevice', 'numpy', 'server') or (m.startswith('streamer.') "
        "and m != 'streamer.protocol' and not m.startswith('streamer.protocol.'))]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert result.stdout.strip() == ""


def test_real_server_backlog_then_live_events_in_order_for_subscribed_streams() -> None:
    """Against the real server: hello, backlog, then live windows, only of the subscribed stream."""

    async def main() -> list[object]:
        backlog = [window(0, "a"), window(0, "b"), window(1, "a")]
        async with real_server("run1", windows=backlog) as (hub, srv):
            seen: list[object] = []
            async with EventClient(srv.ws_url, streams=("a",), reconnect=False) as client:
                async with asyncio.timeout(TIMEOUT_S):
                    async for event in client.events():
                        seen.append(event)
                        if event == window(1, "a"):
                            for message in (window(1, "b"), window(2, "a")):
                                hub.publish(message)
                        if event == window(2, "a"):
                            break
            return seen

    seen = asyncio.run(main())
    assert isinstance(seen[0], Hello) and seen[0].session == "run1"
    windows = [(e.stream, e.seq) for e in seen if isinstance(e, WindowMessage)]
    assert windows == [("a", 0), ("a", 1), ("a", 2)]
