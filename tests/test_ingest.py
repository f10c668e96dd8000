"""WS /ingest: real server on 127.0.0.1:0, real senders (raw websockets and client.push)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client.push import push_file
from server.config import IngestConfig, ServerConfig
from server.ingest import IngestRejected, IngestSpec, check_start, decode_audio
from server.monitor import Monitor
from server.store import read_events
from streamer.audio import f32le_to_float32, float32_to_int16, s16le_to_float32
from streamer.engine import EngineConfig
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    ErrorMessage,
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    Message,
    StreamCloseMessage,
    StreamOpenMessage,
    Subscribe,
    UtteranceMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import speech_like
from tests.conftest import TIMEOUT_S


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_model(tiny_wav2vec2: Path) -> Any:
    return load_model(str(tiny_wav2vec2), device="cpu")


@pytest.fixture(scope="module")
def bundled_model() -> Any:
    return load_model(None, device="cpu")


@asynccontextmanager
async def monitor(model: Any, store: Path | None = None, **overrides: Any
                  ) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor (no sources) on 127.0.0.1:0."""
    fields: dict[str, Any] = {"port": 0, "store_path": store, "shutdown_timeout_s": TIMEOUT_S}
    fields.update(overrides)
    async with Monitor(model, engine_config=EngineConfig(),
                       server_config=ServerConfig(**fields)) as running:
        yield running


def pcm(audio: np.ndarray) -> bytes:
    """float32 (frames[, channels]) -> interleaved s16le bytes."""
    return float32_to_int16(np.ascontiguousarray(audio, dtype=np.float32)).tobytes()


async def send_audio(ws: ClientConnection, audio: np.ndarray) -> None:
    """Send audio unpaced in 0.1 s frames."""
    for i in range(0, audio.shape[0], 1600):
        await ws.send(pcm(audio[i : i + 1600]))


async def receive(ws: ClientConnection) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def open_call(url: str, **fields: Any) -> tuple[ClientConnection, Message]:
    """Connect, send ingest_start (defaults: mono 16 kHz s16le), return the server's reply."""
    start = {"stream": "call", "sample_rate_hz": 16000, "channels": 1, "format": "s16le"}
    start.update(fields)
    ws = await connect(url)
    await ws.send(encode(IngestStart(**start)))
    return ws, await receive(ws)


async def rejection(ws: ClientConnection) -> tuple[ErrorMessage, int | None]:
    """The error frame the server sends, then its close code."""
    error = await receive(ws)
    assert isinstance(error, ErrorMessage), error
    with pytest.raises(ConnectionClosed):
        await receive(ws)
    return error, ws.close_code


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


def stored(store: Path, stream: str) -> list[Message]:
    return [m for _, m in read_events(store, stream=stream)]


# -- pure parts -------------------------------------------------------------------------------


def test_check_start_names_streams_per_channel() -> None:
    """Roles name the per-channel streams; without roles they are ch0, ch1."""
    spec = check_start(IngestStart("call-42", 8000, 2, "s16le", ("agent", "customer"), {"k": "v"}))
    assert spec.streams == ("call-42/agent", "call-42/customer")
    assert spec.stream_metadata(1) == {
        "k": "v", "source": "ingest", "call": "call-42", "role": "customer", "channel": "1",
        "channels": "2", "format": "s16le",
    }
    assert check_start(IngestStart("c", 48000, 2, "f32le")).streams == ("c/ch0", "c/ch1")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"format": "mulaw"}, "unsupported_format"),
        ({"sample_rate_hz": 7999}, "unsupported_rate"),
        ({"sample_rate_hz": 96000}, "unsupported_rate"),
        ({"channels": 0}, "unsupported_channels"),
        ({"channels": 3}, "unsupported_channels"),
        ({"stream": "a/b"}, "bad_stream_id"),
        ({"stream": ""}, "bad_stream_id"),
        ({"roles": ("agent",), "channels": 2}, "bad_roles"),
        ({"roles": ("x", "x"), "channels": 2}, "bad_roles"),
        ({"metadata": {"role": "boss"}}, "bad_metadata"),
    ],
)
def test_check_start_refuses_bad_fields(fields: dict[str, Any], code: str) -> None:
    """Each bad start field is refused with its own code and close 1003."""
    start = {"stream": "call", "sample_rate_hz": 16000, "channels": 1, "format": "s16le"}
    start.update(fields)
    with pytest.raises(IngestRejected) as info:
        check_start(IngestStart(**start))
    assert info.value.code == code and info.value.close == 1003


def test_wire_samples_convert_once_with_scaling() -> None:
    """s16le bytes scale to [-1, 1); f32le bytes keep their values; both come out native float32."""
    pcm16 = s16le_to_float32(b"\x00\x80\x00\x00\xff\x7f")  # -32768, 0, 32767 little-endian
    assert pcm16.dtype == np.float32 and pcm16.tolist() == [-1.0, 0.0, 32767 / 32768]
    floats = np.array([0.25, -0.5], dtype="<f4").tobytes()
    native = f32le_to_float32(floats)
    assert native.dtype == np.float32 and native.flags.writeable
    assert native.tolist() == [0.25, -0.5]


def test_decode_audio_deinterleaves_and_refuses_partial_frames() -> None:
    """Interleaved s16le/f32le become (frames, channels) float32; partial frames are refused."""
    spec = IngestSpec("c", 8000, 2, "s16le", ("c/ch0", "c/ch1"), ("ch0", "ch1"))
    data = np.array([[16384, -16384], [0, 32767]], dtype="<i2").tobytes()
    out = decode_audio(spec, data)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert out[0].tolist() == [0.5, -0.5]
    with pytest.raises(IngestRejected, match="not a whole number"):
        decode_audio(spec, data[:6])
    f32 = IngestSpec("c", 8000, 1, "f32le", ("c/ch0",), ("ch0",))
    assert decode_audio(f32, np.array([0.25], "<f4").tobytes()).tolist() == [[0.25]]
    with pytest.raises(IngestRejected, match="finite"):
        decode_audio(f32, np.array([np.nan], "<f4").tobytes())


# -- end to end -------------------------------------------------------------------------------


def test_stereo_call_labels_only_the_speaking_channel(tmp_path: Path, bundled_model: Any) -> None:
    """Speech on the agent channel, silence on the customer's: labels only on call-1/agent."""
    speech = speech_like(3.0)
    silence = np.zeros(speech.size + 8000, np.float32)
    wav = tmp_path / "call.wav"
    sf.write(wav, np.stack([np.concatenate([speech, np.zeros(8000, np.float32)]), silence], 1),
             16000)
    store = tmp_path / "store.sqlite3"
    streams = {"call-1/agent", "call-1/customer"}

    async def scenario() -> list[Message]:
        async with monitor(bundled_model, store) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            await ws.send(encode(Subscribe(("call-1/",))))
            await ws.send("not json")  # its error reply proves the subscribe was applied
            assert isinstance(await receive(ws), ErrorMessage)
            other = tmp_path / "other.wav"
            sf.write(other, speech_like(2.5, seed=3), 16000)
            pushes = [
                push_file(wav, running.ingest_url, stream="call-1", roles=("agent", "customer")),
                push_file(other, running.ingest_url, stream="other"),
            ]
            results = await asyncio.gather(*pushes)
            assert results[0].streams == ("call-1/agent", "call-1/customer")
            return await until_closed(ws, streams)

    got = run(scenario())
    assert {getattr(m, "stream", None) for m in got} - {None} == streams  # no "other"
    opens = {m.stream: m for m in got if isinstance(m, StreamOpenMessage)}
    assert opens["call-1/agent"].metadata["role"] == "agent"
    assert opens["call-1/customer"].metadata["call"] == "call-1"
    assert opens["call-1/customer"].sample_rate_hz == 16000
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert windows and {w.stream for w in windows} == {"call-1/agent"}
    assert [m.stream for m in got if isinstance(m, UtteranceMessage)] == ["call-1/agent"]
    closes = [m for m in got if isinstance(m, StreamCloseMessage)]
    assert {c.reason for c in closes} == {"end"}
    assert [m.TYPE for m in stored(store, "call-1/customer")] == ["stream_open", "stream_close"]
    assert sum(m.TYPE == "window" for m in stored(store, "call-1/agent")) == len(windows)


def test_8khz_call_is_resampled_and_labelled(tmp_path: Path, tiny_model: Any) -> None:
    """A mono 8 kHz call is classified like any other; stream_open keeps its input rate."""
    wav = tmp_path / "phone.wav"
    sf.write(wav, np.concatenate([speech_like(3.0, rate_hz=8000), np.zeros(4000, np.float32)]),
             8000)

    async def scenario() -> list[Message]:
        async with monitor(tiny_model) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            result = await push_file(wav, running.ingest_url, stream="phone", fast=True)
            assert result.streams == ("phone/ch0",)
            return await until_closed(ws, {"phone/ch0"})

    got = run(scenario())
    assert [m.sample_rate_hz for m in got if isinstance(m, StreamOpenMessage)] == [8000]
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert windows and windows[0].end_s == pytest.approx(windows[0].start_s + 2.0)


@pytest.mark.slow
def test_fifty_concurrent_real_time_calls_all_get_labels(bundled_model: Any) -> None:
    """Fifty pushed calls at real-time pace with the bundled model: every stream gets labels."""
    n = 50
    audio = np.concatenate([speech_like(4.0, seed=7), np.zeros(3200, np.float32)])

    async def send(url: str, i: int) -> None:
        ws, ack = await open_call(url, stream=f"load-{i}")
        assert isinstance(ack, IngestAck)
        loop = asyncio.get_running_loop()
        began = loop.time()
        step = 320  # 20 ms
        for k in range(0, audio.size, step):
            await asyncio.sleep(max(0.0, began + (k + step) / 16000 - loop.time()))
            await ws.send(pcm(audio[k : k + step]))
        await ws.send(encode(IngestEnd()))
        with pytest.raises(ConnectionClosed):
            await receive(ws)
        assert ws.close_code == 1000

    async def scenario() -> list[Message]:
        async with monitor(bundled_model) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            await asyncio.gather(*(send(running.ingest_url, i) for i in range(n)))
            return await until_closed(ws, {f"load-{i}/ch0" for i in range(n)})

    got = run(scenario())
    labelled = {m.stream for m in got if isinstance(m, WindowMessage)}
    assert labelled == {f"load-{i}/ch0" for i in range(n)}


# -- bad input ----------------------------------------------------------------------------------


def test_audio_before_start_is_refused(tiny_model: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A binary frame first gets error audio_before_start and close 1008, and is logged."""

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model) as running, connect(running.ingest_url) as ws:
            await ws.send(pcm(np.zeros(160, np.float32)))
            return await rejection(ws)

    with caplog.at_level(logging.WARNING, logger="server.ingest"):
        error, code = run(scenario())
    assert (error.code, code) == ("audio_before_start", 1008)
    assert any("audio_before_start" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"format": "u8"}, "unsupported_format"),
        ({"sample_rate_hz": 4000}, "unsupported_rate"),
        ({"sample_rate_hz": 96000}, "unsupported_rate"),
        ({"channels": 3}, "unsupported_channels"),
    ],
)
def test_unsupported_start_is_refused_with_1003(
    tiny_model: Any, fields: dict[str, Any], code: str
) -> None:
    """Unknown format, rate or channel count out of range: error naming it, then 1003."""

    async def scenario() -> tuple[Message, tuple[ErrorMessage, int | None]]:
        async with monitor(tiny_model) as running:
            ws, reply = await open_call(running.ingest_url, **fields)
            with pytest.raises(ConnectionClosed):
                await receive(ws)
            return reply, (ErrorMessage("", ""), ws.close_code)

    reply, (_, close) = run(scenario())
    assert isinstance(reply, ErrorMessage) and reply.code == code
    assert close == 1003


def test_bad_json_start_is_refused(tiny_model: Any) -> None:
    """A start frame that is not a valid message gets its MessageError code, then 1003."""

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model) as running, connect(running.ingest_url) as ws:
            await ws.send('{"type":"ingest_start","v":1,"stream":"x"}')
            return await rejection(ws)

    error, code = run(scenario())
    assert error.code == "bad_message" and "lacks" in error.message and code == 1003


def test_partial_frame_ends_only_that_call_and_keeps_what_it_produced(
    tmp_path: Path, tiny_model: Any
) -> None:
    """A frame of half a sample frame: error, 1003; its windows and close stay in the store."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model, store) as running:
            ws, ack = await open_call(running.ingest_url, stream="bad", channels=2)
            good, good_ack = await open_call(running.ingest_url, stream="good")
            assert isinstance(ack, IngestAck) and isinstance(good_ack, IngestAck)
            speech = speech_like(3.0)
            await send_audio(ws, np.stack([speech, speech], 1))
            await ws.send(b"\x00\x01\x02")  # 3 bytes: frames are 4 bytes (2 ch x s16le)
            result = await rejection(ws)
            await send_audio(good, speech)  # the other call is unaffected
            await good.send(encode(IngestEnd()))
            with pytest.raises(ConnectionClosed):
                await receive(good)
            assert good.close_code == 1000
            return result

    error, code = run(scenario())
    assert (error.code, code) == ("partial_frame", 1003)
    assert "4-byte sample frames" in error.message
    for stream in ("bad/ch0", "bad/ch1"):
        events = stored(store, stream)
        assert any(isinstance(m, WindowMessage) for m in events)
        assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "error"
    good_events = stored(store, "good/ch0")
    assert isinstance(good_events[-1], StreamCloseMessage) and good_events[-1].reason == "end"


def test_oversized_frame_is_refused_with_1009(tiny_model: Any) -> None:
    """A binary frame over --ingest-max-frame-bytes: error frame_too_big, then 1009."""

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model, ingest=IngestConfig(max_frame_bytes=4096)) as running:
            ws, ack = await open_call(running.ingest_url)
            assert isinstance(ack, IngestAck) and ack.max_frame_bytes == 4096
            await ws.send(bytes(4098))
            return await rejection(ws)

    error, code = run(scenario())
    assert (error.code, code) == ("frame_too_big", 1009)
    assert "4098 bytes" in error.message


def test_duplicate_live_stream_id_is_refused_and_the_first_call_continues(
    tiny_model: Any,
) -> None:
    """A second sender with a live call id gets duplicate_stream/1008; the first one goes on."""

    async def scenario() -> tuple[Message, int | None, int | None]:
        async with monitor(tiny_model) as running:
            first, ack = await open_call(running.ingest_url, stream="dup")
            assert isinstance(ack, IngestAck)
            second, reply = await open_call(running.ingest_url, stream="dup")
            with pytest.raises(ConnectionClosed):
                await receive(second)
            health = await asyncio.to_thread(_get_json, running.url + "healthz")
            assert health["ingest_rejected"] == {"duplicate_stream": 1}  # counted, visible
            await send_audio(first, speech_like(1.0))
            await first.send(encode(IngestEnd()))
            with pytest.raises(ConnectionClosed):
                await receive(first)
            # once ended, the id is free again
            again, again_ack = await open_call(running.ingest_url, stream="dup")
            assert isinstance(again_ack, IngestAck)
            await again.close()
            return reply, second.close_code, first.close_code

    reply, second_code, first_code = run(scenario())
    assert isinstance(reply, ErrorMessage) and reply.code == "duplicate_stream"
    assert (second_code, first_code) == (1008, 1000)


def test_stalled_sender_is_closed_after_the_idle_timeout(tmp_path: Path, tiny_model: Any) -> None:
    """A sender silent for --ingest-idle-timeout-s gets idle_timeout/1008; stream_close says so."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model, store, ingest=IngestConfig(idle_timeout_s=0.3)) as running:
            ws, ack = await open_call(running.ingest_url, stream="stall")
            assert isinstance(ack, IngestAck)
            await ws.send(pcm(speech_like(0.5)))
            return await rejection(ws)  # then nothing more is sent

    error, code = run(scenario())
    assert (error.code, code) == ("idle_timeout", 1008)
    events = stored(store, "stall/ch0")
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "idle_timeout"


def test_vanished_sender_closes_its_streams_and_keeps_their_windows(
    tmp_path: Path, tiny_model: Any
) -> None:
    """A sender whose TCP connection drops mid-call: its streams close 'disconnected', kept."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with monitor(tiny_model, store) as running, connect(running.ws_url) as events:
            assert isinstance(await receive(events), Hello)
            ws, ack = await open_call(running.ingest_url, stream="gone")
            assert isinstance(ack, IngestAck)
            await send_audio(ws, speech_like(3.0))
            assert ws.transport is not None
            ws.transport.abort()  # no close frame: the sender vanished
            await until_closed(events, {"gone/ch0"})

    run(scenario())
    events = stored(store, "gone/ch0")
    assert any(isinstance(m, WindowMessage) for m in events)
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "disconnected"


def test_text_frame_mid_call_is_refused(tiny_model: Any) -> None:
    """After the start only audio and ingest_end are allowed: another start gets 1008."""

    async def scenario() -> tuple[ErrorMessage, int | None]:
        async with monitor(tiny_model) as running:
            ws, ack = await open_call(running.ingest_url)
            assert isinstance(ack, IngestAck)
            await ws.send(encode(IngestStart("call", 16000, 1, "s16le")))
            return await rejection(ws)

    error, code = run(scenario())
    assert (error.code, code) == ("unexpected_type", 1008)


def test_shutdown_closes_senders_with_1001(tmp_path: Path, tiny_model: Any) -> None:
    """Stopping the monitor closes a live call with 1001; its stream closes 'shutdown'."""
    store = tmp_path / "store.sqlite3"

    async def scenario() -> int | None:
        async with monitor(tiny_model, store) as running:
            ws, ack = await open_call(running.ingest_url, stream="live")
            assert isinstance(ack, IngestAck)
            await ws.send(pcm(speech_like(1.0)))
            await running.close()
            with pytest.raises(ConnectionClosed):
                await receive(ws)
            return ws.close_code

    assert run(scenario()) == 1001
    events = stored(store, "live/ch0")
    assert isinstance(events[-1], StreamCloseMessage) and events[-1].reason == "shutdown"


def test_no_realtime_server_applies_backpressure_to_a_fast_sender(
    tmp_path: Path, tiny_model: Any
) -> None:
    """With --no-realtime a --fast push loses no window: the sender is slowed down instead."""
    wav = tmp_path / "fast.wav"
    sf.write(wav, np.stack([speech_like(6.0), speech_like(6.0, seed=2)], 1), 22050)
    config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)

    async def scenario() -> list[Message]:
        async with Monitor(tiny_model, engine_config=EngineConfig(realtime=False, queue_windows=1),
                           server_config=config) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            await push_file(wav, running.ingest_url, stream="bulk", fast=True)
            return await until_closed(ws, {"bulk/ch0", "bulk/ch1"})

    got = run(scenario())
    closes = [m for m in got if isinstance(m, StreamCloseMessage)]
    assert [(c.reason, c.windows_dropped) for c in closes] == [("end", 0), ("end", 0)]
    for close in closes:
        windows = [m for m in got if isinstance(m, WindowMessage) and m.stream == close.stream]
        assert len(windows) == close.windows > 0
