"""WS /audio-fork: a FreeSWITCH mod_audio_fork client against a real Monitor and a /ws client.

The client speaks what the mod_audio_fork README documents: HTTP Basic from the
MOD_AUDIO_BASIC_AUTH_* channel variables, the ``audio.drachtio.org`` subprotocol, the
``<metadata>`` argument as the first text frame, then binary L16 frames (little-endian,
interleaved caller/callee for stereo), ``send_text`` text frames, and a close to end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.config import IngestConfig, ServerConfig
from server.connectors.audio_fork import (
    AUDIO_FORK_CREDENTIALS_ENV,
    AudioForkConfig,
    AudioForkRefused,
    add_audio_fork_flags,
    audio_fork_config_from_args,
    check_basic_auth,
    fork_spec,
    parse_fork_rate,
)
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

USER = "freeswitch"
PASSWORD = "s3cret-fork-password-0123"
CONFIG = AudioForkConfig(f"{USER}:{PASSWORD}")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def basic(user: str, password: str) -> dict[str, str]:
    """The header mod_audio_fork sends when MOD_AUDIO_BASIC_AUTH_USERNAME/_PASSWORD are set."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@asynccontextmanager
async def monitor(model: Any = None, store: Path | None = None, *,
                  config: AudioForkConfig = CONFIG, **overrides: Any) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor with the audio-fork connector on 127.0.0.1:0."""
    fields: dict[str, Any] = {"port": 0, "store_path": store, "shutdown_timeout_s": TIMEOUT_S,
                              "connectors": (config,)}
    fields.update(overrides)
    async with Monitor(model or FixedProbabilitiesModel(), engine_config=EngineConfig(),
                       server_config=ServerConfig(**fields)) as running:
        yield running


async def fork(running: Monitor, query: str = "", *, headers: dict[str, str] | None = None
               ) -> ClientConnection:
    """Connect as mod_audio_fork does (credential, subprotocol) to /audio-fork?<query>."""
    url = f"ws://127.0.0.1:{running.port}/audio-fork" + (f"?{query}" if query else "")
    return await connect(url, additional_headers=basic(USER, PASSWORD) if headers is None
                         else headers, subprotocols=["audio.drachtio.org"])  # type: ignore[list-item]


def l16(*channels: np.ndarray) -> bytes:
    """float32 channels -> interleaved 16-bit little-endian PCM (what the module sends)."""
    frames = np.stack(channels, axis=1) if len(channels) > 1 else channels[0]
    return float32_to_int16(np.ascontiguousarray(frames, dtype=np.float32)).astype("<i2").tobytes()


async def send_l16(ws: ClientConnection, audio: bytes, frame_bytes: int) -> None:
    """Send audio unpaced in frames of ``frame_bytes`` (20 ms in the module's default)."""
    for i in range(0, len(audio), frame_bytes):
        await ws.send(audio[i:i + frame_bytes])


async def receive(ws: ClientConnection) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def until_closed(ws: ClientConnection, streams: set[str]) -> list[Message]:
    """/ws messages until every stream in ``streams`` has closed."""
    got: list[Message] = []
    open_ = set(streams)
    while open_:
        message = await receive(ws)
        got.append(message)
        if isinstance(message, StreamCloseMessage):
            open_.discard(message.stream)
    return got


async def refusal(ws: ClientConnection) -> tuple[dict[str, Any], int | None]:
    """The server's error message (mod_audio_fork's ``error`` type), then its close code."""
    message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert message["type"] == "error", message
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    return message["data"], ws.close_code


def stored(store: Path, stream: str) -> list[Message]:
    return [m for _, m in read_events(store, stream=stream)]


# -- pure parts -------------------------------------------------------------------------------


def test_spec_takes_call_format_and_parameters_from_metadata_and_url() -> None:
    """Stereo: caller -> customer, callee -> agent; other metadata fields become param.*."""
    metadata = json.dumps({"callId": "c-1", "from": "+15551234", "to": "100",
                           "sampleRate": 16000, "extra": {"queue": "sales"}})
    spec = fork_spec(CONFIG, "mix=stereo", metadata)
    assert (spec.call_id, spec.mix, spec.sample_rate_hz) == ("c-1", "stereo", 16000)
    assert spec.roles == ("customer", "agent") and spec.frame_bytes == 4
    assert spec.metadata == {"param.from": "+15551234", "param.to": "100",
                             "param.extra": '{"queue":"sales"}', "mix": "stereo"}
    mono = fork_spec(CONFIG, "rate=8k&mix=mono", '{"callid": "abc"}')
    assert (mono.call_id, mono.roles, mono.sample_rate_hz) == ("abc", ("customer",), 8000)
    mixed = fork_spec(AudioForkConfig(CONFIG.credentials, mix="mixed", sample_rate_hz=16000),
                      "", '{"uuid": "7f3c"}')
    assert (mixed.roles, mixed.sample_rate_hz) == (("mixed",), 16000)  # the flags' defaults


@pytest.mark.parametrize(
    ("query", "metadata", "code"),
    [
        ("", "not json", "bad_json"),
        ("", "[1, 2]", "bad_json"),
        ("", "[" * 100_000, "bad_json"),
        ("", '{"to": "100"}', "missing_call_id"),
        ("", '{"callId": "a b"}', "bad_call_id"),
        ("", '{"callId": true}', "bad_call_id"),
        ("rate=44100", '{"callId": "c"}', "unsupported_rate"),
        ("", '{"callId": "c", "sampleRate": "96k"}', "unsupported_rate"),
        ("mix=quad", '{"callId": "c"}', "unsupported_mix"),
        ("rate=16k", '{"callId": "c", "sampleRate": 8000}', "conflicting_rate"),
        ("mix=mono", '{"callId": "c", "mixType": "stereo"}', "conflicting_mix"),
        ("&".join(f"k{i}=v" for i in range(40)), '{"callId": "c"}', "bad_query"),
    ],
)
def test_spec_refuses_what_it_cannot_take(query: str, metadata: str, code: str) -> None:
    """Bad JSON, no or bad call id, a wrong or conflicting rate or mix: refused with 1003."""
    with pytest.raises(AudioForkRefused) as caught:
        fork_spec(CONFIG, query, metadata)
    assert (caught.value.code, caught.value.close) == (code, 1003)


def test_rates_parse_as_the_modules_write_them() -> None:
    """8k / 16k / 16000 are taken; a rate the engine will not run is refused."""
    assert [parse_fork_rate(v) for v in ("8k", "16K", 16000, " 8000 ")] == [8000, 16000,
                                                                           16000, 8000]
    for bad in ("44.1k", 11025, True, None, "16kHz"):
        with pytest.raises(AudioForkRefused):
            parse_fork_rate(bad)


def test_basic_auth_check_is_exact() -> None:
    """Only one well-formed Basic header with the configured user:password passes."""
    good = basic(USER, PASSWORD)["Authorization"]
    expected = CONFIG.credentials
    assert check_basic_auth([good], expected)
    assert not check_basic_auth([], expected)
    assert not check_basic_auth([good, good], expected)
    assert not check_basic_auth([basic(USER, PASSWORD + "x")["Authorization"]], expected)
    assert not check_basic_auth([good.replace("Basic", "Bearer")], expected)
    assert not check_basic_auth(["Basic !!!not-base64"], expected)
    assert not check_basic_auth(["Basic " + "A" * 2000], expected)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_audio_fork_flags(p)
    return p


def test_flags_fail_closed_without_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--audio-fork without a credential (file or env) is an error, not an open endpoint."""
    monkeypatch.delenv(AUDIO_FORK_CREDENTIALS_ENV, raising=False)
    assert audio_fork_config_from_args(parser().parse_args([])) is None
    with pytest.raises(ServerError, match="needs a credential"):
        audio_fork_config_from_args(parser().parse_args(["--audio-fork"]))
    with pytest.raises(ServerError, match="without --audio-fork"):
        audio_fork_config_from_args(parser().parse_args(["--audio-fork-mix", "mono"]))
    weak = tmp_path / "weak"
    weak.write_text("freeswitch:short\n")
    with pytest.raises(ServerError, match="USER:PASSWORD"):
        audio_fork_config_from_args(parser().parse_args(
            ["--audio-fork", "--audio-fork-credentials-file", str(weak)]))
    monkeypatch.setenv(AUDIO_FORK_CREDENTIALS_ENV, f"{USER}:{PASSWORD}")
    config = audio_fork_config_from_args(parser().parse_args(
        ["--audio-fork", "--audio-fork-sample-rate", "16k", "--audio-fork-caller-role", "agent",
         "--audio-fork-callee-role", "customer"]))
    assert config is not None and config.sample_rate_hz == 16000
    assert config.roles("stereo") == ("agent", "customer")
    assert PASSWORD not in repr(config)


# -- end to end -------------------------------------------------------------------------------


def test_stereo_fork_labels_each_party_on_its_own_stream(tmp_path: Path) -> None:
    """Speech on the caller's channel only: windows on <call>/customer, none on <call>/agent."""
    speech = speech_like(3.0)
    caller = np.concatenate([speech, np.zeros(8000, np.float32)])
    audio = l16(caller, np.zeros_like(caller))
    store = tmp_path / "store.sqlite3"
    streams = {"uuid-1/customer", "uuid-1/agent"}
    metadata = {"callId": "uuid-1", "from": "+15551234", "to": "100"}

    model = load_model(None, device="cpu")

    async def scenario() -> tuple[list[Message], str | None, dict[str, Any]]:
        async with monitor(model, store) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws = await fork(running, "mix=stereo&rate=16k")
            await ws.send(json.dumps(metadata))
            await send_l16(ws, audio[: len(audio) // 2], 1280)  # 20 ms of 16 kHz stereo
            await ws.send(json.dumps({"event": "dtmf", "digit": "5"}))  # uuid_audio_fork send_text
            await send_l16(ws, audio[len(audio) // 2:], 1280)
            await ws.send(b"")  # graceful-shutdown: an empty binary frame, taken as no audio
            await ws.close()  # uuid_audio_fork stop / hangup
            got = await until_closed(events, streams)
            return got, ws.subprotocol, running.connector("audio_fork").stats()

    got, subprotocol, stats = run(scenario())
    assert subprotocol == "audio.drachtio.org"
    opens = {m.stream: m for m in got if isinstance(m, StreamOpenMessage)}
    assert set(opens) == streams
    assert opens["uuid-1/customer"].metadata == {
        "param.from": "+15551234", "param.to": "100", "mix": "stereo", "source": "audio_fork",
        "call": "uuid-1", "role": "customer", "channel": "0", "channels": "2"}
    assert opens["uuid-1/agent"].metadata["channel"] == "1"
    assert {m.sample_rate_hz for m in opens.values()} == {16000}
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert windows and {w.stream for w in windows} == {"uuid-1/customer"}
    assert {m.reason for m in got if isinstance(m, StreamCloseMessage)} == {"end"}
    assert [m.TYPE for m in stored(store, "uuid-1/agent")] == ["stream_open", "stream_close"]
    assert stats["calls"] == 1 and stats["live"] == 0 and stats["text_frames"] == 1
    assert stats["frames"] > 0 and stats["bytes"] == len(audio)


@pytest.mark.parametrize(("mix", "stream"), [("mono", "m-1/customer"), ("mixed", "m-1/mixed")])
def test_one_channel_forks_take_the_flag_defaults(mix: str, stream: str) -> None:
    """Mono and mixed forks are one stream; rate and mix from the flags when not stated."""
    config = AudioForkConfig(CONFIG.credentials, mix=mix, sample_rate_hz=8000)

    async def scenario() -> list[Message]:
        async with monitor(config=config) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws = await fork(running)
            await ws.send('{"callId": "m-1"}')
            await send_l16(ws, l16(speech_like(2.5, rate_hz=8000)), 320)
            await ws.close()
            return await until_closed(events, {stream})

    got = run(scenario())
    opens = [m for m in got if isinstance(m, StreamOpenMessage)]
    assert [(m.stream, m.sample_rate_hz, m.metadata["mix"]) for m in opens] == [
        (stream, 8000, mix)]
    assert any(isinstance(m, WindowMessage) for m in got)


def test_credential_check_fails_closed() -> None:
    """No credential or a wrong one: 401 with a Basic challenge; counted; no call opened."""

    async def scenario() -> tuple[list[int], list[str], dict[str, Any]]:
        statuses, challenges = [], []
        async with monitor() as running:
            for headers in ({}, basic(USER, "wrong-password-0123456789"),
                            basic("someone", PASSWORD)):
                with pytest.raises(InvalidStatus) as caught:
                    await fork(running, headers=headers)
                statuses.append(caught.value.response.status_code)
                challenges.append(caught.value.response.headers.get("WWW-Authenticate", ""))
            return statuses, challenges, running.connector("audio_fork").stats()

    statuses, challenges, stats = run(scenario())
    assert statuses == [401, 401, 401]
    assert all(c.startswith("Basic ") for c in challenges)
    assert stats["refused"] == {"missing_credentials": 1, "bad_credentials": 2}
    assert stats["calls"] == 0


def lws_upgrade(path: str, authorization: str) -> bytes:
    """The upgrade request mod_audio_fork's libwebsockets client writes (header for header).

    It names the host of the URL without a port and, as libwebsockets does unless told
    otherwise, sends ``Origin: http://<that host>``.
    """
    key = base64.b64encode(b"mod_audio_fork!!").decode()
    return (f"GET {path} HTTP/1.1\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n"
            "Host: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Protocol: audio.drachtio.org\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: {authorization}\r\n\r\n").encode()


@pytest.mark.parametrize(("credential", "status"), [(PASSWORD, 101), ("wrong", 401)])
def test_the_modules_upgrade_request_with_its_origin_header_is_judged_by_its_credential(
    credential: str, status: int
) -> None:
    """libwebsockets sends Origin: http://<host>: a connector path does not judge that header
    (platforms are not browsers); the Basic credential decides, exactly as the module sends it."""

    async def scenario() -> list[str]:
        async with monitor() as running:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(lws_upgrade("/audio-fork?mix=stereo&rate=16k",
                                     basic(USER, credential)["Authorization"]))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
            writer.close()
            await writer.wait_closed()
            return head.decode().split("\r\n")

    lines = run(scenario())
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    if status == 101:
        assert "Sec-WebSocket-Protocol: audio.drachtio.org" in lines


def test_a_frame_past_the_websocket_limit_is_closed_1009_and_counted() -> None:
    """A frame too big for the connection itself: the library closes 1009; still counted."""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor(ingest=IngestConfig(max_frame_bytes=1024)) as running, \
                connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws = await fork(running, "mix=mono")
            await ws.send('{"callId": "huge"}')
            await ws.send(b"\x00" * 40_000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            closed = await until_closed(events, {"huge/customer"})
            assert isinstance(closed[-1], StreamCloseMessage) and closed[-1].reason == "error"
            return ws.close_code, running.connector("audio_fork").stats()

    code, stats = run(scenario())
    assert code == 1009 and stats["refused"] == {"frame_too_big": 1}


STEREO_START = '{"callId": "bad-1"}'


@pytest.mark.parametrize(
    ("query", "frames", "code", "close"),
    [
        ("mix=stereo", [b"\x00\x01" * 320], "audio_before_metadata", 1008),
        ("mix=stereo", ["{not json"], "bad_json", 1003),
        ("mix=stereo", ['{"from": "+1555"}'], "missing_call_id", 1003),
        ("rate=44100", [STEREO_START], "unsupported_rate", 1003),
        ("rate=16k", ['{"callId": "bad-1", "sampleRate": "8k"}'], "conflicting_rate", 1003),
        ("mix=stereo", [STEREO_START, b"\x00" * 6], "partial_frame", 1003),
        ("mix=mono", [STEREO_START, b"\x00" * 3], "partial_frame", 1003),
        ("mix=stereo", [STEREO_START, b"\x00" * 2048], "frame_too_big", 1009),
        ("mix=stereo", ["x" * (17 * 1024)], "text_too_big", 1009),
    ],
)
def test_malformed_forks_get_an_error_message_and_a_close_code(
    query: str, frames: list[str | bytes], code: str, close: int
) -> None:
    """Each malformed case: mod_audio_fork's error message naming it, then its close code."""

    async def scenario() -> tuple[dict[str, Any], int | None, dict[str, Any]]:
        async with monitor(ingest=IngestConfig(max_frame_bytes=1024)) as running:
            ws = await fork(running, query)
            for frame in frames:
                await ws.send(frame)
            data, close_code = await refusal(ws)
            return data, close_code, running.connector("audio_fork").stats()

    data, close_code, stats = run(scenario())
    assert (data["code"], close_code) == (code, close)
    assert data["message"]
    assert stats["refused"] == {code: 1} and stats["live"] == 0


def test_a_refused_frame_ends_only_that_call_and_keeps_what_it_produced(tmp_path: Path) -> None:
    """A partial frame mid-call: that call's streams close 'error', its windows are stored."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with monitor(store=store) as running:
            ws = await fork(running, "mix=mono&rate=16k")
            await ws.send('{"callId": "half"}')
            await send_l16(ws, l16(speech_like(3.0)), 640)
            await ws.send(b"\x00" * 641)
            data, _ = await refusal(ws)
            assert data["code"] == "partial_frame"

    run(scenario())
    events = stored(store, "half/customer")
    assert any(isinstance(m, WindowMessage) for m in events)
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "error"


def test_a_live_call_id_is_refused_and_the_first_fork_goes_on(tmp_path: Path) -> None:
    """A second fork naming a live call gets duplicate_stream/1008; the first still feeds."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> tuple[dict[str, Any], int | None]:
        async with monitor(store=store) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            first = await fork(running, "mix=mono&rate=16k")
            await first.send('{"callId": "dup"}')
            await send_l16(first, l16(speech_like(1.0)), 640)
            second = await fork(running, "mix=mono&rate=16k")
            await second.send('{"callId": "dup"}')
            result = await refusal(second)
            await send_l16(first, l16(speech_like(2.0, seed=1)), 640)
            await first.close()
            await until_closed(events, {"dup/customer"})
            return result

    data, code = run(scenario())
    assert (data["code"], code) == ("duplicate_stream", 1008)
    events = stored(store, "dup/customer")
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "end"


def test_a_silent_fork_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    """No frame for --ingest-idle-timeout-s: idle_timeout/1008, stream_close says so."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> tuple[dict[str, Any], int | None]:
        async with monitor(store=store, ingest=IngestConfig(idle_timeout_s=0.3)) as running:
            ws = await fork(running, "mix=mono&rate=16k")
            await ws.send('{"callId": "quiet"}')
            await ws.send(l16(speech_like(0.2)))
            return await refusal(ws)

    data, code = run(scenario())
    assert (data["code"], code) == ("idle_timeout", 1008)
    events = stored(store, "quiet/customer")
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "idle_timeout"


def test_a_vanished_fork_closes_its_streams_disconnected(tmp_path: Path) -> None:
    """FreeSWITCH gone without a close frame: the streams close 'disconnected'."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with monitor(store=store) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws = await fork(running, "mix=mono&rate=16k")
            await ws.send('{"callId": "gone"}')
            await send_l16(ws, l16(speech_like(1.0)), 640)
            assert ws.transport is not None
            ws.transport.abort()
            await until_closed(events, {"gone/customer"})

    run(scenario())
    events = stored(store, "gone/customer")
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "disconnected"


def test_shutdown_closes_forks_with_1001(tmp_path: Path) -> None:
    """Stopping the monitor closes a live fork with 1001; its streams close 'shutdown'."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> int | None:
        async with monitor(store=store) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws = await fork(running, "mix=stereo&rate=16k")
            await ws.send('{"callId": "bye"}')
            await send_l16(ws, l16(speech_like(0.5), speech_like(0.5, seed=2)), 1280)
            opened: set[str] = set()
            while len(opened) < 2:  # both streams are open: the fork is live
                message = await receive(events)
                if isinstance(message, StreamOpenMessage):
                    opened.add(message.stream)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        return ws.close_code

    assert run(scenario()) == 1001
    for role in ("customer", "agent"):
        events = stored(store, f"bye/{role}")
        assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "shutdown"
