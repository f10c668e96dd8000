"""Asterisk AudioSocket: byte-exact legs against a real Monitor's listener and a /ws client.

Every message here is built from the layout on the Asterisk AudioSocket page (one kind byte,
a two-byte big-endian payload length, the payload): ``0x01`` with the 16-byte binary UUID
first, ``0x10`` signed 16-bit little-endian 8 kHz mono audio, ``0x03`` DTMF, ``0x00`` hangup,
``0xff`` error. The UUID is the page's example, ``40325ec2-5efd-4bd3-805f-53576e581d13``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from server.config import IngestConfig, ServerConfig
from server.connectors.audiosocket import (
    AudioSocketConfig,
    AudioSocketConnector,
    AudioSocketRefused,
    add_audiosocket_flags,
    audiosocket_config_from_args,
    parse_audiosocket_header,
    uuid_from_payload,
)
from server.connectors.audiosocket_map import AudioSocketMap, parse_map_line
from server.errors import ServerError
from server.monitor import Monitor
from server.store import read_events
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    Hello,
    Message,
    StreamCloseMessage,
    StreamOpenMessage,
    WindowMessage,
    decode,
)
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S

EXAMPLE_UUID = "40325ec2-5efd-4bd3-805f-53576e581d13"  # the AudioSocket page's example
AGENT_UUID = "9b2f6c1e-0d7a-4e43-9a59-3c8e2f1d7b60"
HANGUP = b"\x00\x00\x00"  # the page: "Hangup indication, for instance, is 0x00 0x00 0x00"
SLIN_8K = 0x10
FRAME = 320  # 20 ms of 8 kHz 16-bit mono, what Asterisk sends per message
#: the legs a test opened (closed when its monitor stops)
LEGS: list[asyncio.StreamWriter] = []


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def message(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message: kind, big-endian length, payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def uuid_message(text: str) -> bytes:
    return message(0x01, uuid.UUID(text).bytes)


def slin(audio: np.ndarray) -> bytes:
    """float32 mono -> signed 16-bit little-endian PCM."""
    return float32_to_int16(np.ascontiguousarray(audio, np.float32)).astype("<i2").tobytes()


def audio_messages(audio: np.ndarray, kind: int = SLIN_8K, size: int = FRAME) -> bytes:
    pcm = slin(audio)
    return b"".join(message(kind, pcm[i:i + size]) for i in range(0, len(pcm), size))


def write_map(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@asynccontextmanager
async def monitor(tmp_path: Path, *map_lines: str, model: Any = None, store: bool = False,
                  ingest: IngestConfig | None = None, **fields: Any) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor with an AudioSocket listener on 127.0.0.1:0."""
    roles_file = fields.pop("roles_file", None) or write_map(tmp_path / "audiosocket.map",
                                                             *map_lines)
    config = AudioSocketConfig(0, roles_file, **fields)
    server = ServerConfig(port=0, store_path=tmp_path / "store.sqlite3" if store else None,
                          shutdown_timeout_s=TIMEOUT_S, connectors=(config,),
                          ingest=ingest or IngestConfig())
    try:
        async with Monitor(model or FixedProbabilitiesModel(), engine_config=EngineConfig(),
                           server_config=server) as running:
            yield running
    finally:
        while LEGS:  # the test's Asterisk side: every leg it opened is closed
            writer = LEGS.pop()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def open_leg(running: Monitor, leg_uuid: str | None = EXAMPLE_UUID
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect as Asterisk does and send the UUID message (unless ``leg_uuid`` is None)."""
    listener = running.connector("audiosocket")
    assert isinstance(listener, AudioSocketConnector)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    LEGS.append(writer)
    if leg_uuid is not None:
        writer.write(uuid_message(leg_uuid))
    return reader, writer


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), TIMEOUT_S)


async def receive(ws: ClientConnection) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def until_closed(ws: ClientConnection, streams: set[str]) -> list[Message]:
    got: list[Message] = []
    open_ = set(streams)
    while open_:
        got.append(await receive(ws))
        if isinstance(got[-1], StreamCloseMessage):
            open_.discard(got[-1].stream)
    return got


def stats(running: Monitor) -> dict[str, Any]:
    return running.connector("audiosocket").stats()


def closes(tmp_path: Path, stream: str) -> list[str]:
    return [m.reason for _, m in read_events(tmp_path / "store.sqlite3", stream=stream)
            if isinstance(m, StreamCloseMessage)]


# -- pure parts -------------------------------------------------------------------------------


def test_documented_messages_are_read_byte_exactly() -> None:
    """The UUID, audio and hangup messages of the documented layout, parsed back."""
    uuid_bytes = uuid_message(EXAMPLE_UUID)
    assert uuid_bytes == bytes.fromhex("010010" "40325ec25efd4bd3805f53576e581d13")
    assert parse_audiosocket_header(uuid_bytes[:3]) == (0x01, 16)
    assert uuid_from_payload(uuid_bytes[3:]) == EXAMPLE_UUID
    assert message(SLIN_8K, b"\x01\x00" * 160)[:3] == b"\x10\x01\x40"  # 320 bytes, big-endian
    assert parse_audiosocket_header(HANGUP) == (0x00, 0)
    with pytest.raises(AudioSocketRefused) as caught:
        uuid_from_payload(b"\x00" * 15)
    assert caught.value.code == "bad_uuid"


def test_map_lines_name_call_role_and_parameters() -> None:
    """'UUID CALL ROLE KEY=VALUE...': canonical UUID, param.* metadata; bad lines refused."""
    roles = ("agent", "customer")
    entry = parse_map_line(f"  {EXAMPLE_UUID.upper()}  1712345678.42 customer queue=sales ",
                           roles)
    assert entry is not None
    assert (entry.uuid, entry.call_id, entry.role) == (EXAMPLE_UUID, "1712345678.42",
                                                       "customer")
    assert entry.params == (("param.queue", "sales"),)
    assert parse_map_line("# UUID CALL ROLE", roles) is None
    assert parse_map_line("   ", roles) is None
    for bad in (f"{EXAMPLE_UUID} call", "not-a-uuid call agent", f"{EXAMPLE_UUID} a/b agent",
                f"{EXAMPLE_UUID} call boss", f"{EXAMPLE_UUID} call agent novalue"):
        with pytest.raises(ValueError):
            parse_map_line(bad, roles)


def test_map_is_reread_as_the_dialplan_appends_and_each_uuid_is_taken_once(
    tmp_path: Path,
) -> None:
    """Appended lines are found; a rotated file starts over; a used UUID stays refused."""
    path = write_map(tmp_path / "map", f"{EXAMPLE_UUID} c1 customer", "garbage line")
    leg_map = AudioSocketMap(path, ("agent", "customer"))

    async def scenario() -> list[object]:
        got: list[object] = [await leg_map.take(EXAMPLE_UUID), await leg_map.take(EXAMPLE_UUID),
                             await leg_map.take(AGENT_UUID)]
        with path.open("a") as file:  # what Set(FILE(...,,,al)=...) does
            file.write(f"{AGENT_UUID} c1 agent")  # no newline yet: the line is not complete
            file.flush()
            got.append(await leg_map.take(AGENT_UUID))
            file.write("\n")
        got.append(await leg_map.take(AGENT_UUID))
        third = str(uuid.uuid4())
        write_map(path, f"{third} c2 agent", f"{EXAMPLE_UUID} c3 agent")  # rotated
        got += [await leg_map.take(third), await leg_map.take(EXAMPLE_UUID)]
        return got

    got = run(scenario())
    assert getattr(got[0], "call_id", None) == "c1"
    assert got[1:4] == ["uuid_used", "unknown_uuid", "unknown_uuid"]
    assert getattr(got[4], "role", None) == "agent"
    assert getattr(got[5], "call_id", None) == "c2" and got[6] == "uuid_used"
    assert leg_map.stats()["skipped_lines"] == 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_audiosocket_flags(p)
    return p


def test_flags_fail_closed(tmp_path: Path) -> None:
    """No map, or a public address without an allow-list: refused before anything listens."""
    assert audiosocket_config_from_args(parser().parse_args([])) is None
    with pytest.raises(ServerError, match="--audiosocket-roles-file"):
        audiosocket_config_from_args(parser().parse_args(["--audiosocket-port", "9092"]))
    with pytest.raises(ServerError, match="without --audiosocket-port"):
        audiosocket_config_from_args(parser().parse_args(
            ["--audiosocket-roles-file", "x"]))
    with pytest.raises(ServerError, match="allow-peer"):
        audiosocket_config_from_args(parser().parse_args(
            ["--audiosocket-port", "9092", "--audiosocket-roles-file", "x",
             "--audiosocket-host", "0.0.0.0"]))
    config = audiosocket_config_from_args(parser().parse_args(
        ["--audiosocket-port", "9092", "--audiosocket-roles-file", "x", "--audiosocket-host",
         "0.0.0.0", "--audiosocket-allow-peer", "10.1.2.0/24", "--audiosocket-call-roles",
         "agent, customer, supervisor"]))
    assert config is not None and config.call_roles == ("agent", "customer", "supervisor")

    async def start_without_map() -> None:
        async with monitor(tmp_path, roles_file=tmp_path / "missing"):
            pass

    with pytest.raises(ServerError, match="missing"):
        run(start_without_map())


# -- end to end -------------------------------------------------------------------------------


def test_two_legs_join_one_call_with_a_stream_per_party(tmp_path: Path) -> None:
    """Customer and agent legs of one call: <call>/customer and <call>/agent, labels apart."""
    call = "1712345678.42"
    lines = (f"{EXAMPLE_UUID} {call} customer queue=sales", f"{AGENT_UUID} {call} agent")
    speech = np.concatenate([speech_like(3.0, rate_hz=8000), np.zeros(4000, np.float32)])
    streams = {f"{call}/customer", f"{call}/agent"}
    model = load_model(None, device="cpu")

    async def scenario() -> tuple[list[Message], bytes, bytes, dict[str, Any]]:
        async with monitor(tmp_path, *lines, model=model, store=True) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            customer_r, customer = await open_leg(running, EXAMPLE_UUID)
            customer.write(audio_messages(speech[:8000]))
            agent_r, agent = await open_leg(running, AGENT_UUID)
            agent.write(audio_messages(np.zeros(speech.size, np.float32)))
            customer.write(message(0x03, b"5"))  # a DTMF digit: counted, skipped
            customer.write(message(0x20, b"future"))  # an unknown kind: counted, skipped
            customer.write(audio_messages(speech[8000:]))
            agent.write(HANGUP)  # the agent leg ends first
            agent_answer = await answer(agent_r)
            await customer.drain()
            customer.close()  # "socket closure is also sufficient"
            got = await until_closed(events, streams)
            return got, agent_answer, await answer(customer_r), stats(running)

    got, agent_answer, customer_answer, counters = run(scenario())
    assert agent_answer == customer_answer == b""  # a clean end needs no answer
    opens = {m.stream: m for m in got if isinstance(m, StreamOpenMessage)}
    assert set(opens) == streams
    assert opens[f"{call}/agent"].metadata == {
        "param.queue": "sales", "uuid.customer": EXAMPLE_UUID, "source": "audiosocket",
        "call": call, "role": "agent", "channel": "0", "channels": "2"}
    assert {m.sample_rate_hz for m in opens.values()} == {8000}
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert windows and {w.stream for w in windows} == {f"{call}/customer"}
    assert closes(tmp_path, f"{call}/agent") == closes(tmp_path, f"{call}/customer") == ["end"]
    assert counters["calls"] == 1 and counters["live"] == 0 and counters["refused"] == {}
    assert (counters["dtmf"], counters["unknown_kinds"]) == (1, 1)
    assert counters["map"]["entries"] == 0  # both UUIDs taken


def test_16khz_legs_are_taken(tmp_path: Path) -> None:
    """Kind 0x12 (16 kHz, the channel driver with slin16) opens the call at 16 kHz."""

    async def scenario() -> list[Message]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} wide customer") as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            _, writer = await open_leg(running)
            writer.write(audio_messages(speech_like(2.5), kind=0x12, size=640) + HANGUP)
            return await until_closed(events, {"wide/customer", "wide/agent"})

    got = run(scenario())
    assert {m.sample_rate_hz for m in got if isinstance(m, StreamOpenMessage)} == {16000}
    assert any(isinstance(m, WindowMessage) for m in got)


UNKNOWN = str(uuid.UUID(int=7))


@pytest.mark.parametrize(
    ("leg_uuid", "sent", "code"),
    [
        (UNKNOWN, b"", "unknown_uuid"),
        (None, message(SLIN_8K, b"\x00" * FRAME), "expected_uuid"),
        (None, message(0x01, b"\x00" * 15), "bad_uuid"),
        (EXAMPLE_UUID, b"\x10\x07\xd0", "frame_too_big"),  # a 2000-byte payload announced
        (EXAMPLE_UUID, message(SLIN_8K, b"\x00\x01\x02"), "partial_sample"),
        (EXAMPLE_UUID, message(0x17, b"\x00" * FRAME), "unsupported_rate"),  # 96 kHz
        (EXAMPLE_UUID, message(SLIN_8K, b"\x00" * FRAME) + message(0x12, b"\x00" * FRAME),
         "rate_changed"),
        (EXAMPLE_UUID, uuid_message(EXAMPLE_UUID), "unexpected_uuid"),
    ],
)
def test_bad_legs_get_a_hangup_and_are_counted(
    tmp_path: Path, leg_uuid: str | None, sent: bytes, code: str
) -> None:
    """Unknown UUID, audio before the UUID, oversized, odd or wrong-codec audio: hangup."""

    async def scenario() -> tuple[bytes, dict[str, Any]]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} c1 customer",
                           ingest=IngestConfig(max_frame_bytes=1024)) as running:
            reader, writer = await open_leg(running, leg_uuid)
            writer.write(sent)
            return await answer(reader), stats(running)

    reply, counters = run(scenario())
    assert reply == HANGUP
    assert counters["refused"] == {code: 1} and counters["live"] == 0


def test_a_uuid_opens_one_connection_only(tmp_path: Path) -> None:
    """A second connection with a UUID already used is refused (no replay)."""

    async def scenario() -> tuple[bytes, dict[str, Any]]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} c1 customer") as running:
            reader, writer = await open_leg(running)
            writer.write(audio_messages(np.zeros(800, np.float32)) + HANGUP)
            assert await answer(reader) == b""
            again, _ = await open_leg(running)
            return await answer(again), stats(running)

    reply, counters = run(scenario())
    assert reply == HANGUP and counters["refused"] == {"uuid_used": 1}


@pytest.mark.parametrize("tail", [message(SLIN_8K, b"\x00" * FRAME)[:100], b"\x10\x01"],
                         ids=["payload", "header"])
def test_a_truncated_message_closes_the_streams_disconnected(tmp_path: Path, tail: bytes) -> None:
    """The connection ends inside a message: counted truncated_frame, streams 'disconnected'."""

    async def scenario() -> dict[str, Any]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} cut customer", store=True) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            reader, writer = await open_leg(running)
            writer.write(audio_messages(speech_like(1.0, rate_hz=8000)) + tail)
            writer.write_eof()
            await until_closed(events, {"cut/customer", "cut/agent"})
            await answer(reader)
            return stats(running)

    counters = run(scenario())
    assert counters["refused"] == {"truncated_frame": 1}
    assert closes(tmp_path, "cut/customer") == ["disconnected"]


@pytest.mark.parametrize(("code", "reason"), [(0x01, "end"), (0x02, "error")])
def test_asterisk_errors_are_counted_and_end_the_leg(tmp_path: Path, code: int,
                                                     reason: str) -> None:
    """0xff from Asterisk: counted by code, logged; 'caller hung up' is a normal end."""

    async def scenario() -> dict[str, Any]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} err customer", store=True) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            _, writer = await open_leg(running)
            writer.write(audio_messages(np.zeros(800, np.float32)) + message(0xFF, bytes([code])))
            await until_closed(events, {"err/customer", "err/agent"})
            return stats(running)

    counters = run(scenario())
    assert counters["asterisk_errors"] == {f"0x{code:02x}": 1}
    assert closes(tmp_path, "err/customer") == [reason]


def test_a_silent_leg_is_hung_up_after_the_idle_timeout(tmp_path: Path) -> None:
    """Nothing for --ingest-idle-timeout-s: hangup, streams close 'idle_timeout'."""

    async def scenario() -> bytes:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} idle customer", store=True,
                           ingest=IngestConfig(idle_timeout_s=0.3)) as running:
            reader, writer = await open_leg(running)
            writer.write(audio_messages(np.zeros(800, np.float32)))
            return await answer(reader)

    assert run(scenario()) == HANGUP
    assert closes(tmp_path, "idle/customer") == ["idle_timeout"]


def test_peers_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    """With --audiosocket-allow-peer, another address is hung up before its UUID is read."""

    async def scenario(allowed: str) -> tuple[bytes, dict[str, Any]]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} p customer",
                           allow_peers=(allowed,)) as running:
            reader, writer = await open_leg(running)
            writer.write(HANGUP)
            return await answer(reader), stats(running)

    reply, counters = run(scenario("10.0.0.0/8"))
    assert reply == HANGUP and counters["refused"] == {"peer_not_allowed": 1}
    reply, counters = run(scenario("127.0.0.1"))
    assert reply == b"" and counters["refused"] == {}


@pytest.mark.parametrize(("second", "kind", "code"), [
    (f"{AGENT_UUID} both customer", SLIN_8K, "duplicate_leg"),  # the same role twice
    (f"{AGENT_UUID} both agent", 0x12, "rate_mismatch"),  # a leg at another rate
])
def test_a_second_leg_must_fit_the_call(tmp_path: Path, second: str, kind: int,
                                        code: str) -> None:
    """A leg repeating a role, or at another rate, is refused; the first leg goes on."""

    async def scenario() -> tuple[bytes, dict[str, Any]]:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} both customer", second) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            _, first = await open_leg(running)
            first.write(audio_messages(np.zeros(800, np.float32)))
            while not isinstance(await receive(events), StreamOpenMessage):
                pass  # the first leg's call is open
            reader, writer = await open_leg(running, AGENT_UUID)
            writer.write(audio_messages(np.zeros(800, np.float32), kind=kind))
            reply = await answer(reader)
            counters = stats(running)
            first.write(HANGUP)
            return reply, counters

    reply, counters = run(scenario())
    assert reply == HANGUP and counters["refused"] == {code: 1} and counters["live"] == 1


def test_shutdown_hangs_up_live_legs(tmp_path: Path) -> None:
    """Stopping the monitor sends a hangup on each live leg; streams close 'shutdown'."""

    async def scenario() -> bytes:
        async with monitor(tmp_path, f"{EXAMPLE_UUID} bye customer", store=True) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            reader, writer = await open_leg(running)
            writer.write(audio_messages(np.zeros(800, np.float32)))
            while not isinstance(await receive(events), StreamOpenMessage):
                pass
        return await answer(reader)

    assert run(scenario()) == HANGUP
    assert closes(tmp_path, "bye/customer") == ["shutdown"]
