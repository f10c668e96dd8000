"""`emotion-monitor push` end to end against `run --source none` (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TIMEOUT_S
from test_log import start_command, wait_for_line
from websockets.asyncio.client import connect

from client.errors import ClientError
from client.push import ingest_url, pcm_frames
from streamer.protocol.limits import INGEST_BYTES_PER_SAMPLE
from streamer.protocol.messages import Hello, Message, StreamCloseMessage, WindowMessage, decode
from streamer.testing import speech_like


def test_ingest_url_defaults_the_path_and_refuses_other_schemes() -> None:
    """http(s) becomes ws(s), no path means /ingest, anything else is a ClientError."""
    assert ingest_url("http://127.0.0.1:9000") == "ws://127.0.0.1:9000/ingest"
    assert ingest_url("wss://h/in") == "wss://h/in"
    with pytest.raises(ClientError, match="bad URL"):
        ingest_url("ftp://h/ingest")


def test_pcm_frames_interleave_little_endian() -> None:
    """Frames x channels blocks become interleaved little-endian bytes."""
    block = np.array([[1, -2], [3, 4]], dtype=np.int16)
    (data,) = pcm_frames(iter([block]), "s16le")
    assert np.frombuffer(data, "<i2").tolist() == [1, -2, 3, 4]


@pytest.mark.parametrize(("fmt", "size"), sorted(INGEST_BYTES_PER_SAMPLE.items()))
def test_pcm_frames_use_the_protocol_sample_sizes(fmt: str, size: int) -> None:
    """Each ingest format takes the bytes per sample the protocol limits give it."""
    block = np.zeros((3, 2), dtype=np.float32 if fmt == "f32le" else np.int16)
    (data,) = pcm_frames(iter([block]), fmt)
    assert len(data) == 3 * 2 * size


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await start_command(*args)
    async with asyncio.timeout(TIMEOUT_S * 2):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_push_a_stereo_call_and_bad_pushes_exit_2(tmp_path: Path) -> None:
    """A stereo file pushed with roles yields labels on the speaking channel; rejects exit 2."""
    speech = np.concatenate([speech_like(3.0), np.zeros(8000, np.float32)])
    stereo = tmp_path / "call.wav"
    sf.write(stereo, np.stack([np.zeros_like(speech), speech], 1), 16000)
    mono = tmp_path / "short.wav"
    sf.write(mono, speech_like(1.0, rate_hz=8000), 8000)
    too_fast = tmp_path / "hifi.wav"
    sf.write(too_fast, np.zeros(9600, np.float32), 96000)

    async def main() -> list[Message]:
        server = await start_command("run", "--source", "none", "--port", "0", "--no-store")
        try:
            assert server.stdout is not None
            seen: list[str] = []
            ws_url = (await wait_for_line(server.stdout, r"^events: ", seen)).split()[1]
            url = (await wait_for_line(server.stdout, r"^ingest: ", seen)).split()[1]
            assert url.endswith("/ingest")

            code, out, err = await run_cli("push", str(stereo), url, "--stream", "call-9",
                                           "--roles", "agent,customer", "--fast")
            assert code == 0, err
            assert "as call-9/agent, call-9/customer" in out
            code, out, err = await run_cli("push", str(mono), url, "--stream", "paced")
            assert code == 0, err  # real-time pace, 8 kHz passes through

            code, _, err = await run_cli("push", str(mono), url, "--stream", "bad/id")
            assert code == 2 and err.count("\n") == 1
            assert "server rejected stream 'bad/id': bad_stream_id" in err
            code, _, err = await run_cli("push", str(too_fast), url, "--stream", "x")
            assert code == 2 and "resample the file first" in err and err.count("\n") == 1
            code, _, err = await run_cli("push", str(mono), url, "--stream", "x",
                                         "--roles", "a,b")
            assert code == 2 and "2 role(s)" in err

            got: list[Message] = []
            async with connect(ws_url) as ws:  # the backlog holds both calls
                open_ = {"call-9/agent", "call-9/customer", "paced/ch0"}
                while open_:
                    message = decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                    got.append(message)
                    if isinstance(message, StreamCloseMessage):
                        open_.discard(message.stream)
            server.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT_S):
                await server.communicate()
            assert server.returncode == 0
            return got
        finally:
            if server.returncode is None:
                server.kill()
                await server.wait()

    got = asyncio.run(main())
    assert isinstance(got[0], Hello)
    labelled = {m.stream for m in got if isinstance(m, WindowMessage)}
    assert labelled == {"call-9/customer", "paced/ch0"}  # not the silent agent channel
