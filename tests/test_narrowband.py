"""A wideband-only model on 8 kHz audio is never silent: stream_open, hello, healthz, log."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TIMEOUT_S, save_tiny_compact
from websockets.asyncio.client import connect

from server.config import ServerConfig
from server.monitor import Monitor
from streamer.audio import float32_to_int16
from streamer.engine import Engine, EngineConfig
from streamer.events import Event, StreamOpened
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    StreamCloseMessage,
    StreamOpenMessage,
    decode,
    encode,
)
from streamer.testing import speech_like


@pytest.fixture(scope="module")
def wideband(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny compact model whose config has no narrowband field."""
    return load_model(save_tiny_compact(tmp_path_factory.mktemp("wideband")), device="cpu")


@pytest.fixture(scope="module")
def narrowband(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same tiny model with ``"narrowband": true`` in its config."""
    folder = save_tiny_compact(tmp_path_factory.mktemp("narrowband"), narrowband=True)
    return load_model(folder, device="cpu")


def _healthz(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


async def _recv(ws: Any) -> Any:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


def _push_8khz_call(model: Any) -> dict[str, Any]:
    """Push an 8 kHz call to /ingest; what /ws, a later hello and /healthz said meanwhile."""

    async def scenario() -> dict[str, Any]:
        config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)
        async with Monitor(model, engine_config=EngineConfig(), server_config=config) as m, \
                connect(m.ws_url) as viewer:
            first = await _recv(viewer)
            async with connect(m.ingest_url) as sender:
                await sender.send(encode(IngestStart(stream="phone", sample_rate_hz=8000,
                                                     channels=1, format="s16le")))
                assert isinstance(await _recv(sender), IngestAck)
                opened = await _recv(viewer)
                assert isinstance(opened, StreamOpenMessage)
                async with connect(m.ws_url) as late:
                    hello = await _recv(late)
                health = await asyncio.to_thread(_healthz, m.port)
                audio = np.concatenate([speech_like(2.5, rate_hz=8000),
                                        np.zeros(4000, np.float32)])
                await sender.send(float32_to_int16(audio).tobytes())
                await sender.send(encode(IngestEnd()))
                while not isinstance(await _recv(viewer), StreamCloseMessage):
                    pass
            after = await asyncio.to_thread(_healthz, m.port)
        return {"first": first, "opened": opened, "hello": hello, "health": health,
                "after": after}

    return asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S * 4))


def test_wideband_model_on_an_8khz_call_says_so_everywhere(
    wideband: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """stream_open carries the warning, hello and /healthz show it, the log names it once."""
    assert wideband.narrowband_ok is False
    with caplog.at_level(logging.WARNING, logger="streamer.engine"):
        got = _push_8khz_call(wideband)
    first, opened, hello = got["first"], got["opened"], got["hello"]
    assert isinstance(first, Hello) and first.model_narrowband is False
    assert opened.sample_rate_hz == 8000
    assert opened.warnings == (WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,)
    assert isinstance(hello, Hello)
    assert [(s.stream, s.warnings) for s in hello.streams] == [
        (opened.stream, (WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,))]
    assert got["health"]["model_narrowband"] is False
    assert got["health"]["narrowband_mismatch_streams"] == 1
    assert got["after"]["narrowband_mismatch_streams"] == 0  # the call has ended
    lines = [r.getMessage() for r in caplog.records if "not marked narrowband" in r.getMessage()]
    assert len(lines) == 1
    assert opened.stream in lines[0] and "8000 Hz" in lines[0] and wideband.name in lines[0]


def test_narrowband_model_on_an_8khz_call_has_no_warning(
    narrowband: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With "narrowband": true in config.json: no warning anywhere, hello says narrowband."""
    assert narrowband.narrowband_ok is True
    with caplog.at_level(logging.WARNING, logger="streamer.engine"):
        got = _push_8khz_call(narrowband)
    assert got["first"].model_narrowband is True
    assert got["opened"].warnings == ()
    assert got["health"]["model_narrowband"] is True
    assert got["health"]["narrowband_mismatch_streams"] == 0
    assert not [r for r in caplog.records if "narrowband" in r.getMessage()]


def test_16khz_streams_have_no_warning_and_the_onnx_model_carries_the_flag(
    narrowband: Any, wideband: Any, tmp_path: Path
) -> None:
    """A 16 kHz stream on a wideband model is fine; optimize keeps "narrowband" for ONNX."""
    events: list[Event] = []
    with Engine(wideband, EngineConfig(), events.append) as engine:
        engine.open_stream("wide", sample_rate_hz=16000).close()
        engine.open_stream("low", sample_rate_hz=11025).close()
        assert engine.drain(TIMEOUT_S)
    opened = {e.stream: e.warnings for e in events if isinstance(e, StreamOpened)}
    assert opened == {"wide": (), "low": (WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,)}

    from streamer.offline.optimize import optimize_model

    folder = save_tiny_compact(tmp_path / "nb", narrowband=True)
    optimize_model(folder, tmp_path / "onnx", max_windows=8, repeats=1)
    onnx = load_model(tmp_path / "onnx", backend="onnx", precision="fp32")
    assert onnx.backend == "onnx" and onnx.narrowband_ok is True
