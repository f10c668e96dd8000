"""Genesys Cloud AudioHook Monitor: a real server on 127.0.0.1:0, a client speaking AudioHook.

The client below is Genesys Cloud's side as the AudioHook protocol documentation shows it: the
upgrade request's ``Audiohook-*`` and ``X-API-KEY`` headers (signed with the client secret, as
RFC 9421 HTTP message signatures), the documented ``open`` message, binary frames of
interleaved PCMU or L16 at 8000 Hz, ``ping``, ``paused``/``resumed``, ``close``. Every server
message is checked for ``version``, ``id`` and the server's own ``seq`` counting 1, 2, 3 ...
Events come back through a real ``/ws`` client; the model is a zero-cost fixed one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.config import IngestConfig, ServerConfig
from server.connectors.audiohook import (
    API_KEY_ENV,
    CLIENT_SECRET_ENV,
    AudioHookConfig,
    add_audiohook_flags,
    audiohook_config_from_args,
)
from server.connectors.audiohook_protocol import (
    NULL_UUID,
    AudioHookError,
    AudioHookSession,
    MediaFormat,
    decode_frame,
    select_media,
)
from server.connectors.httpsig import NonceCache, SignatureError, verify_hmac_signature
from server.connectors.registry import CONNECTORS, add_connector_flags
from server.errors import ServerError
from server.monitor import Monitor
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.protocol.messages import (
    Hello,
    Message,
    StreamCloseMessage,
    StreamOpenMessage,
    WindowMessage,
    decode,
)
from streamer.telephony import mulaw_encode
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S

# "Example 1" of the AudioHook documentation's HTTP message signature section
DOC_API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
DOC_CLIENT_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
DOC_TARGET = "/api/v1/voicebiometrics/ws"
DOC_HEADERS = {
    "host": "audiohook.example.com",
    "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
    "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
    "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
    "x-api-key": DOC_API_KEY,
}
DOC_SIGNATURE_INPUT = (
    'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
    '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
    'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430'
)
DOC_SIGNATURE = "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"
DOC_NOW = 1641013205.0

ORGANIZATION = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
PARTICIPANT = "883efee8-3d6c-4537-b500-6d7ca4b92fa0"
COVERED = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
           "audiohook-correlation-id", "x-api-key")
RATE = 8000


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def stereo_offer(fmt: str = "PCMU") -> list[dict[str, Any]]:
    """The media list Genesys Cloud offers for a two-party call (stereo first, then each side)."""
    return [{"type": "audio", "format": fmt, "channels": channels, "rate": RATE}
            for channels in (["external", "internal"], ["external"], ["internal"])]


def open_parameters(conversation: str = CONVERSATION, **overrides: Any) -> dict[str, Any]:
    """The ``open`` parameters of the documentation's example."""
    parameters: dict[str, Any] = {
        "organizationId": ORGANIZATION,
        "conversationId": conversation,
        "participant": {"id": PARTICIPANT, "ani": "+1-555-555-1234", "aniName": "John Doe",
                        "dnis": "+1-800-555-6789"},
        "media": stereo_offer(),
        "language": "en-US",
        "customConfig": {"queue": "billing", "priority": 2},
    }
    parameters.update(overrides)
    return parameters


def sign(headers: dict[str, str], *, target: str, authority: str, secret: bytes,
         created: int, nonce: str) -> dict[str, str]:
    """``Signature-Input`` and ``Signature`` for an upgrade request (the client's signer)."""
    values = {"@request-target": target, "@authority": authority,
              **{name.lower(): value for name, value in headers.items()}}
    params = ("(" + " ".join(f'"{c}"' for c in COVERED) + f');keyid="{headers["X-API-KEY"]}";'
              f'nonce="{nonce}";alg="hmac-sha256";created={created};expires={created + 30}')
    base = "".join(f'"{c}": {values[c]}\n' for c in COVERED) + f'"@signature-params": {params}'
    mac = base64.b64encode(hmac.new(secret, base.encode(), hashlib.sha256).digest()).decode()
    return {"Signature-Input": f"sig1={params}", "Signature": f"sig1=:{mac}:"}


def upgrade_headers(session: str, *, api_key: str = DOC_API_KEY, port: int | None = None,
                    secret: bytes | None = None, created: int | None = None,
                    nonce: str | None = None) -> dict[str, str]:
    """The headers of Genesys Cloud's upgrade request (signed when ``secret`` is given)."""
    headers = {"Audiohook-Organization-Id": ORGANIZATION, "Audiohook-Session-Id": session,
               "Audiohook-Correlation-Id": str(uuid.uuid4()), "X-API-KEY": api_key}
    if secret is not None:
        assert port is not None
        headers |= sign(headers, target="/audiohook", authority=f"127.0.0.1:{port}",
                        secret=secret, created=int(time.time()) if created is None else created,
                        nonce=nonce or base64.b64encode(uuid.uuid4().bytes).decode())
    return headers


class AudioHookClient:
    """Genesys Cloud's side of one AudioHook session (its own seq, the server's seq seen)."""

    def __init__(self, ws: ClientConnection, session: str) -> None:
        self.ws = ws
        self.id = session
        self.seq = 0
        self.serverseq = 0
        self.frames = 0

    async def send(self, kind: str, parameters: dict[str, Any] | None = None, *,
                   seq: int | None = None, **fields: Any) -> None:
        self.seq = self.seq + 1 if seq is None else seq
        message = {"version": "2", "id": self.id, "type": kind, "seq": self.seq,
                   "serverseq": self.serverseq, "position": f"PT{self.frames / RATE:.4f}S",
                   "parameters": parameters or {}}
        await self.ws.send(json.dumps({**message, **fields}))

    async def audio(self, data: bytes, frames: int) -> None:
        await self.ws.send(data)
        self.frames += frames

    async def receive(self) -> dict[str, Any]:
        """The next server message, checked: version 2, this session's id, seq one more."""
        message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
        assert message["version"] == "2" and message["id"] == self.id, message
        assert message["seq"] == self.serverseq + 1, message
        self.serverseq = message["seq"]
        return message

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == kind, message
        return message

    async def open(self, **parameters: Any) -> dict[str, Any]:
        await self.send("open", open_parameters(**parameters))
        return await self.expect("opened")

    async def close(self, reason: str = "end") -> dict[str, Any]:
        """The close transaction; then the client closes the WebSocket, as Genesys Cloud does."""
        await self.send("close", {"reason": reason})
        closed = await self.expect("closed")
        await self.ws.close()
        return closed

    async def refused(self, info: str, reason: str = "error") -> dict[str, Any]:
        """The server's disconnect (``info`` in its text), then the close transaction it asks."""
        message = await self.expect("disconnect")
        assert message["parameters"]["reason"] == reason, message
        assert info in message["parameters"]["info"], message
        await self.close("disconnect")
        return message


def stereo(external: np.ndarray, internal: np.ndarray, fmt: str = "PCMU",
           order: tuple[str, str] = ("external", "internal")) -> bytes:
    """Interleaved sample frames of the two channels, in ``order``."""
    by_name = {"external": external, "internal": internal}
    pcm = float32_to_int16(np.stack([by_name[c] for c in order], axis=1).astype(np.float32))
    if fmt == "PCMU":
        return mulaw_encode(pcm).tobytes()
    return pcm.astype("<i2").tobytes()


async def send_call_audio(client: AudioHookClient, data: bytes, frame_bytes: int,
                          step_s: float = 0.2) -> None:
    """The audio in 200 ms messages (or ``step_s``), as Genesys Cloud sends it (unpaced)."""
    step = int(RATE * step_s) * frame_bytes
    for at in range(0, len(data), step):
        chunk = data[at:at + step]
        await client.audio(chunk, len(chunk) // frame_bytes)


def call_audio(seconds: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Speech on both sides (different voices), then half a second of silence."""
    pad = np.zeros(RATE // 2, np.float32)
    customer = np.concatenate([speech_like(seconds, rate_hz=RATE, seed=1), pad])
    agent = np.concatenate([speech_like(seconds, rate_hz=RATE, seed=2, pitch_hz=210.0), pad])
    return customer, agent


@asynccontextmanager
async def monitor(config: AudioHookConfig | None = None, **ingest: Any
                  ) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor on 127.0.0.1:0 with the AudioHook connector."""
    connectors = () if config is None else (config,)
    server_config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                                 ingest=IngestConfig(**ingest), connectors=connectors)
    async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                       server_config=server_config) as running:
        yield running


def plain_config(**fields: Any) -> AudioHookConfig:
    return AudioHookConfig(api_key=DOC_API_KEY, **fields)


def signed_config(**fields: Any) -> AudioHookConfig:
    return AudioHookConfig(api_key=DOC_API_KEY,
                           client_secret=base64.b64decode(DOC_CLIENT_SECRET), **fields)


@asynccontextmanager
async def session(running: Monitor, *, signed: bool = False, session_id: str | None = None,
                  **header_fields: Any) -> AsyncIterator[AudioHookClient]:
    """An AudioHook connection to the running monitor."""
    sid = session_id or str(uuid.uuid4())
    headers = upgrade_headers(sid, port=running.port, secret=base64.b64decode(
        DOC_CLIENT_SECRET) if signed else None, **header_fields)
    async with connect(f"ws://127.0.0.1:{running.port}/audiohook",
                       additional_headers=headers) as ws:
        yield AudioHookClient(ws, sid)


async def watcher(running: Monitor) -> ClientConnection:
    ws = await connect(running.ws_url)
    assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), Hello)
    return ws


async def until_closed(ws: ClientConnection, streams: set[str]) -> list[Message]:
    """/ws messages until every stream in ``streams`` has closed."""
    got: list[Message] = []
    left = set(streams)
    while left:
        message = decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        got.append(message)
        if isinstance(message, StreamCloseMessage):
            left.discard(message.stream)
    return got


def streams_of(conversation: str = CONVERSATION) -> set[str]:
    return {f"{conversation}/customer", f"{conversation}/agent"}


def refused(running: Monitor) -> dict[str, int]:
    return dict(running.connector("audiohook").stats()["refused"])


# -- the signature (pure) ---------------------------------------------------------------------


def _doc_lookup(headers: dict[str, str], target: str = DOC_TARGET) -> Any:
    return lambda name: {"@request-target": target, "@authority": headers["host"]}.get(
        name, headers.get(name))


def verify_doc(*, headers: dict[str, str] = DOC_HEADERS, target: str = DOC_TARGET,
               signature_input: str = DOC_SIGNATURE_INPUT, now: float = DOC_NOW,
               secret: str = DOC_CLIENT_SECRET, nonces: NonceCache | None = None) -> None:
    verify_hmac_signature(
        signature_input=signature_input, signature=DOC_SIGNATURE,
        lookup=_doc_lookup(headers, target), secret=base64.b64decode(secret),
        keyid=DOC_API_KEY, required=COVERED, max_age_s=10.0, now=now,
        nonces=nonces if nonces is not None else NonceCache(15.0))


def test_documented_signature_example_verifies() -> None:
    """The documentation's example request, key and secret: the signature checks out."""
    verify_doc()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"headers": {**DOC_HEADERS, "audiohook-session-id": str(uuid.UUID(int=1))}},
         "bad_signature"),
        ({"target": "/api/v1/other"}, "bad_signature"),
        ({"secret": base64.b64encode(b"another secret").decode()}, "bad_signature"),
        ({"now": DOC_NOW + 60}, "signature_expired"),
        ({"now": DOC_NOW - 60}, "signature_expired"),
        ({"signature_input": DOC_SIGNATURE_INPUT.replace(' "x-api-key"', "")},
         "missing_component"),
        ({"signature_input": DOC_SIGNATURE_INPUT.replace("hmac-sha256", "rsa-v1_5-sha256")},
         "bad_algorithm"),
        ({"signature_input": DOC_SIGNATURE_INPUT.replace('keyid="SG', 'keyid="XX')},
         "bad_key_id"),
        ({"signature_input": DOC_SIGNATURE_INPUT.replace('nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";', "")},
         "bad_signature_input"),
        ({"signature_input": DOC_SIGNATURE_INPUT[:40]}, "bad_signature_input"),
        ({"signature_input": ""}, "no_signature"),
    ],
)
def test_signature_refusals_name_their_case(change: dict[str, Any], code: str) -> None:
    """A changed header, target, secret, time, component list or parameter: refused, by code."""
    with pytest.raises(SignatureError) as info:
        verify_doc(**change)
    assert info.value.code == code


def test_nonce_is_refused_the_second_time_and_the_cache_stays_bounded() -> None:
    """A replayed nonce is refused; a full cache refuses rather than forgets; expired go."""
    nonces = NonceCache(15.0)
    verify_doc(nonces=nonces)
    with pytest.raises(SignatureError, match="used already") as info:
        verify_doc(nonces=nonces)
    assert info.value.code == "replayed_nonce"
    small = NonceCache(10.0, max_entries=2)
    small.add("a", 100.0)
    small.add("b", 101.0)
    with pytest.raises(SignatureError) as full:
        small.add("c", 102.0)
    assert full.value.code == "nonce_cache_full"
    small.add("c", 111.5)  # "a" and "b" have expired
    assert len(small) == 1


# -- the protocol core (pure) -----------------------------------------------------------------


def test_media_selection_prefers_both_channels_in_the_clients_order() -> None:
    """Stereo beats mono, the client's order breaks ties; nothing acceptable is refused."""
    assert select_media(stereo_offer()) == MediaFormat("PCMU", ("external", "internal"))
    mixed = [{"type": "audio", "format": "L16", "channels": ["internal"], "rate": 8000},
             *stereo_offer("L16"), *stereo_offer("PCMU")]
    assert select_media(mixed) == MediaFormat("L16", ("external", "internal"))
    with pytest.raises(AudioHookError, match="opus/16000") as info:
        select_media([{"type": "audio", "format": "opus", "channels": ["external"],
                       "rate": 16000},
                      {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 16000}])
    assert info.value.code == "unsupported_media"


def test_frames_decode_per_channel_and_partial_frames_are_refused() -> None:
    """PCMU and L16 (little-endian) stereo split into channels; a half sample frame is refused."""
    left, right = np.full(4, 0.5, np.float32), np.full(4, -0.25, np.float32)
    for fmt in ("PCMU", "L16"):
        out = decode_frame(MediaFormat(fmt, ("external", "internal")),
                           stereo(left, right, fmt))
        assert out.shape == (4, 2) and out.dtype == np.float32
        assert np.allclose(out[:, 0], 0.5, atol=0.02) and np.allclose(out[:, 1], -0.25, atol=0.02)
    assert decode_frame(MediaFormat("L16", ("internal",)), b"\x00\x40").tolist() == [[0.5]]
    for fmt, data in (("PCMU", b"\xff" * 3), ("L16", b"\x00" * 6)):
        with pytest.raises(AudioHookError) as info:
            decode_frame(MediaFormat(fmt, ("external", "internal")), data)
        assert info.value.code == "partial_frame"


def test_session_counts_its_own_seq_and_echoes_the_clients() -> None:
    """Server messages count 1, 2, 3 with clientseq = the last client seq; order is enforced."""
    sid = str(uuid.uuid4())
    core = AudioHookSession(session_id=sid, max_frame_bytes=4096)

    def message(kind: str, seq: int, serverseq: int = 0, **parameters: Any) -> str:
        return json.dumps({"version": "2", "id": sid, "type": kind, "seq": seq,
                           "serverseq": serverseq, "position": "PT0S",
                           "parameters": parameters})

    assert core.receive_text(message("open", 1, **open_parameters())) is not None
    opened = json.loads(core.opened())
    assert (opened["seq"], opened["clientseq"], opened["type"]) == (1, 1, "opened")
    core.receive_text(message("ping", 2, 1))
    assert json.loads(core.pong())["clientseq"] == 2
    for bad, code in ((message("ping", 2, 2), "bad_seq"), (message("ping", 4, 2), "bad_seq"),
                      (message("ping", 3, 9), "bad_serverseq")):
        with pytest.raises(AudioHookError) as info:
            core.receive_text(bad)
        assert info.value.code == code
    disconnect = json.loads(core.disconnect("error", "why") or "")
    assert (disconnect["seq"], disconnect["parameters"]) == (3, {"reason": "error", "info": "why"})
    assert core.disconnect("error", "again") is None  # said once
    assert core.receive_audio(b"\xff\xff") is None and core.dropped == 1


# -- configuration: fail closed ---------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_audiohook_flags(parser)
    return parser.parse_args(argv)


def test_config_fails_closed_and_keeps_secrets_out_of_the_command_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No key: refused; key and secret from files or env; bad secret refused; repr hides both."""
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)
    assert audiohook_config_from_args(parse([])) is None
    with pytest.raises(ServerError, match="needs the integration's API key"):
        audiohook_config_from_args(parse(["--audiohook"]))
    with pytest.raises(ServerError, match="add --audiohook"):
        audiohook_config_from_args(parse(["--audiohook-path", "/genesys"]))
    with pytest.raises(ServerError, match="API key"):
        AudioHookConfig(api_key="")
    key_file, secret_file = tmp_path / "key", tmp_path / "secret"
    key_file.write_text(DOC_API_KEY + "\n")
    secret_file.write_text("not base64 !\n")
    with pytest.raises(ServerError, match="not base64"):
        audiohook_config_from_args(parse(["--audiohook", "--audiohook-api-key-file", str(key_file),
                                "--audiohook-client-secret-file", str(secret_file)]))
    monkeypatch.setenv(API_KEY_ENV, "key-from-env")
    monkeypatch.setenv(CLIENT_SECRET_ENV, DOC_CLIENT_SECRET)
    config = audiohook_config_from_args(
        parse(["--audiohook", "--audiohook-external-role", "agent"]))
    assert config is not None and config.api_key == "key-from-env"
    assert config.client_secret == b"MySuperSecretKeyTellNo-1!2@3#4$5"
    assert config.roles_of(("external", "internal")) == ("agent", "customer")
    assert "key-from-env" not in repr(config) and "MySuper" not in repr(config)


def test_run_knows_the_connector_flags() -> None:
    """The registry lists the AudioHook connector; its flags are in one argument group."""
    assert (add_audiohook_flags, audiohook_config_from_args) in CONNECTORS
    parser = argparse.ArgumentParser()
    add_connector_flags(parser)
    assert "--audiohook-client-secret-file" in parser.format_help()


# -- end to end -------------------------------------------------------------------------------


def test_signed_stereo_call_labels_both_parties_and_ends_clean() -> None:
    """A signed PCMU call: opened, pong, pause/resume, per-channel labels, closed, reason end."""
    customer, agent = call_audio()
    data = stereo(customer, agent)
    half = len(data) // 4 * 2  # whole stereo frames

    async def scenario() -> tuple[list[Message], dict[str, Any], dict[str, Any]]:
        async with monitor(signed_config()) as running:
            ws = await watcher(running)
            async with session(running, signed=True) as client:
                opened = await client.open()
                await client.send("ping")
                pong = await client.expect("pong")
                assert pong["clientseq"] == client.seq
                await send_call_audio(client, data[:half], 2)
                await client.send("paused")
                await client.send("resumed", {"start": f"PT{client.frames / RATE:.4f}S",
                                              "discarded": "PT0S"})
                await send_call_audio(client, data[half:], 2)
                closed = await client.close("end")
                assert closed["parameters"] == {}
            got = await until_closed(ws, streams_of())
            await ws.close()
            return got, opened, running.connector("audiohook").stats()

    got, opened, stats = run(scenario())
    assert opened["parameters"] == {
        "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
                   "rate": 8000}],
        "startPaused": False}
    opens = {m.stream: m for m in got if isinstance(m, StreamOpenMessage)}
    customer_meta = opens[f"{CONVERSATION}/customer"].metadata
    assert customer_meta["source"] == "audiohook" and customer_meta["call"] == CONVERSATION
    assert customer_meta["channel"] == "0" and opens[f"{CONVERSATION}/agent"].metadata[
        "channel"] == "1"
    assert customer_meta["audiohook.organization_id"] == ORGANIZATION
    assert customer_meta["audiohook.participant_id"] == PARTICIPANT
    assert customer_meta["language"] == "en-US"
    assert customer_meta["param.queue"] == "billing" and customer_meta["param.priority"] == "2"
    assert "+1-555-555-1234" not in json.dumps(customer_meta)  # the caller's number stays out
    assert all(m.sample_rate_hz == 8000 for m in opens.values())
    windows = {m.stream for m in got if isinstance(m, WindowMessage)}
    assert windows == streams_of()
    assert {m.reason for m in got if isinstance(m, StreamCloseMessage)} == {"end"}
    assert stats["calls"] == 1 and stats["live"] == 0 and stats["refused"] == {}


def test_l16_in_the_offered_channel_order_feeds_the_right_party() -> None:
    """L16 with internal first: speech on internal only -> labels on the agent's stream only."""
    _, agent = call_audio()
    silence = np.zeros_like(agent)
    data = stereo(silence, agent, "L16", order=("internal", "external"))
    offer = [{"type": "audio", "format": "L16", "channels": ["internal", "external"],
              "rate": 8000}]

    async def scenario() -> list[Message]:
        async with monitor(plain_config()) as running:
            ws = await watcher(running)
            async with session(running) as client:
                opened = await client.open(media=offer)
                assert opened["parameters"]["media"] == offer
                await send_call_audio(client, data, 4)
                await client.close()
            got = await until_closed(ws, streams_of())
            await ws.close()
            return got

    got = run(scenario())
    opens = {m.stream: m.metadata for m in got if isinstance(m, StreamOpenMessage)}
    assert opens[f"{CONVERSATION}/agent"]["channel"] == "0"
    assert opens[f"{CONVERSATION}/agent"]["audiohook.format"] == "L16"
    assert {m.stream for m in got if isinstance(m, WindowMessage)} == {f"{CONVERSATION}/agent"}


def test_credential_check_fails_closed() -> None:
    """No key, a wrong key, no/bad/expired/replayed signature: 401, counted; a good one passes."""
    async def attempt(running: Monitor, headers: dict[str, str]) -> int:
        try:
            async with connect(f"ws://127.0.0.1:{running.port}/audiohook",
                               additional_headers=headers):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def scenario() -> tuple[list[int], dict[str, int], int]:
        secret = base64.b64decode(DOC_CLIENT_SECRET)
        async with monitor(signed_config()) as running:
            sid = str(uuid.uuid4())
            port = running.port
            good = upgrade_headers(sid, port=port, secret=secret)
            tampered = {**good, "Audiohook-Session-Id": str(uuid.uuid4())}
            no_key = {k: v for k, v in good.items() if k != "X-API-KEY"}
            statuses = [
                await attempt(running, no_key),
                await attempt(running, upgrade_headers(sid, api_key="wrong", port=port,
                                                       secret=secret)),
                await attempt(running, upgrade_headers(sid)),  # not signed
                await attempt(running, tampered),
                await attempt(running, upgrade_headers(sid, port=port, secret=secret,
                                                       created=int(time.time()) - 60)),
                await attempt(running, good),
                await attempt(running, good),  # the same nonce again
            ]
            counts = refused(running)
        async with monitor() as bare:  # no --audiohook: no endpoint at all
            missing = await attempt(bare, upgrade_headers(sid))
        return statuses, counts, missing

    statuses, counts, missing = run(scenario())
    assert statuses == [401, 401, 401, 401, 401, 101, 401]
    assert counts == {"no_api_key": 1, "bad_api_key": 1, "no_signature": 1, "bad_signature": 1,
                      "signature_expired": 1, "replayed_nonce": 1}
    assert missing == 404


async def _bad_json(client: AudioHookClient) -> None:
    await client.ws.send("{this is not json")


async def _wrong_codec(client: AudioHookClient) -> None:
    await client.send("open", open_parameters(media=[
        {"type": "audio", "format": "opus", "channels": ["external", "internal"], "rate": 48000},
        {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 16000}]))


async def _audio_before_opened(client: AudioHookClient) -> None:
    await client.audio(b"\xff" * 320, 160)


async def _opened(client: AudioHookClient) -> None:
    await client.open()
    await send_call_audio(client, stereo(*call_audio(0.5)), 2, step_s=0.05)  # 800-byte frames


async def _seq_skipped(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("ping", seq=client.seq + 2)


async def _seq_repeated(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("ping", seq=client.seq)


async def _serverseq_ahead(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("ping", serverseq=client.serverseq + 5)


async def _oversized(client: AudioHookClient) -> None:
    await _opened(client)
    await client.audio(b"\xff" * 2048, 1024)


async def _odd_pcmu(client: AudioHookClient) -> None:
    await _opened(client)
    await client.audio(b"\xff" * 321, 160)


async def _odd_l16(client: AudioHookClient) -> None:
    await client.open(media=stereo_offer("L16"))
    await client.audio(b"\x00" * 642, 160)


async def _audio_while_paused(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("paused")
    await client.audio(b"\xff" * 320, 160)


async def _second_open(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("open", open_parameters())


async def _unknown_type(client: AudioHookClient) -> None:
    await _opened(client)
    await client.send("rewind")


async def _other_session_id(client: AudioHookClient) -> None:
    real, client.id = client.id, str(uuid.uuid4())
    await client.send("open", open_parameters())
    client.id = real  # the server answers with the session id of the upgrade request


async def _other_organization(client: AudioHookClient) -> None:
    await client.send("open", open_parameters(organizationId=str(uuid.uuid4())))


@pytest.mark.parametrize(
    ("misbehave", "code", "info", "reason"),
    [
        (_bad_json, "bad_json", "not valid JSON", "error"),
        (_wrong_codec, "unsupported_media", "opus/48000/external+internal", "error"),
        (_audio_before_opened, "audio_before_open", "audio before opened", "error"),
        (_seq_skipped, "bad_seq", "out of order", "error"),
        (_seq_repeated, "bad_seq", "out of order", "error"),
        (_serverseq_ahead, "bad_serverseq", "serverseq", "error"),
        (_oversized, "frame_too_big", "over the 1024-byte limit", "error"),
        (_odd_pcmu, "partial_frame", "not a whole number of 2-byte", "error"),
        (_odd_l16, "partial_frame", "not a whole number of 4-byte", "error"),
        (_audio_while_paused, "audio_while_paused", "after paused", "error"),
        (_second_open, "unexpected_message", "second open", "error"),
        (_unknown_type, "unknown_type", "'rewind'", "error"),
        (_other_session_id, "bad_session_id", "session's id", "error"),
        (_other_organization, "organization_mismatch", "organizationId", "unauthorized"),
    ],
)
def test_malformed_session_gets_a_disconnect_and_a_clean_close(
    misbehave: Any, code: str, info: str, reason: str,
) -> None:
    """Each malformed case: disconnect (reason, info), then close/closed; counted by code."""
    async def scenario() -> tuple[dict[str, int], list[str], int]:
        async with monitor(plain_config(), max_frame_bytes=1024) as running:
            ws = await watcher(running)
            async with session(running) as client:
                await misbehave(client)
                await client.refused(info, reason)
                closed = set()
                if running.connector("audiohook").stats()["calls"]:
                    closed = {m.reason for m in await until_closed(ws, streams_of())
                              if isinstance(m, StreamCloseMessage)}
            await ws.close()
            assert running.desk is not None
            return refused(running), sorted(closed), running.desk.live

    counts, reasons, live = run(scenario())
    assert counts == {code: 1}
    assert reasons in ([], ["error"]) and live == 0


def test_frame_past_the_websocket_limit_is_closed_with_1009() -> None:
    """A message beyond even the connection's limit: websockets closes with 1009, counted."""
    async def scenario() -> tuple[int | None, dict[str, int]]:
        async with monitor(plain_config()) as running:
            limit = running.connector("audiohook").max_message_bytes
            async with session(running) as client:
                await client.open()
                await client.ws.send(b"\xff" * (limit + 2))
                with pytest.raises(ConnectionClosed):
                    await client.receive()
                code = client.ws.close_code
        return code, refused(running)  # the handler has ended with the monitor

    code, counts = run(scenario())
    assert code == 1009 and counts == {"frame_too_big": 1}


def test_call_limits_are_the_desks() -> None:
    """max_calls and a live conversation id are refused with disconnect; the first call goes on."""
    async def scenario() -> dict[str, int]:
        async with monitor(plain_config(), max_calls=1) as running:
            async with session(running) as first:
                await first.open()
                async with session(running) as same:
                    await same.send("open", open_parameters())
                    await same.refused("already live")
                async with session(running) as other:
                    await other.send("open", open_parameters(str(uuid.uuid4())))
                    await other.refused("--max-ingest-calls 1")
                await first.send("ping")
                await first.expect("pong")
                await first.close()
            return refused(running)

    assert run(scenario()) == {"duplicate_stream": 1, "too_many_calls": 1}


def test_silent_client_is_disconnected_after_the_idle_timeout() -> None:
    """No message for the idle timeout: disconnect, streams close with reason idle_timeout."""
    async def scenario() -> tuple[list[str], int | None]:
        async with monitor(plain_config(), idle_timeout_s=0.3) as running:
            ws = await watcher(running)
            async with session(running) as client:
                await client.open()
                message = await client.expect("disconnect")
                assert "--ingest-idle-timeout-s" in message["parameters"]["info"]
                reasons = [m.reason for m in await until_closed(ws, streams_of())
                           if isinstance(m, StreamCloseMessage)]
                with pytest.raises(ConnectionClosed):  # silent after the disconnect too
                    await client.receive()
                code = client.ws.close_code
            await ws.close()
            return reasons, code

    reasons, code = run(scenario())
    assert reasons == ["idle_timeout", "idle_timeout"] and code == 1008


def test_a_paused_session_is_not_cut_by_the_idle_timeout() -> None:
    """Paused longer than the idle timeout (monitoring off for a while): resumed, still served."""
    async def scenario() -> dict[str, Any]:
        async with monitor(plain_config(), idle_timeout_s=0.2) as running:
            async with session(running) as client:
                await client.open()
                await client.send("paused")
                await asyncio.sleep(0.6)  # the pause itself, three idle timeouts long
                await client.send("resumed", {"start": "PT0S", "discarded": "PT0.6S"})
                await client.send("ping")
                pong = await client.expect("pong")
                await client.close()
            assert refused(running) == {}
            return pong

    assert run(scenario())["clientseq"] == 4


def test_call_past_max_call_s_ends_with_max_length() -> None:
    """More audio than --ingest-max-call-s: disconnect, streams close with reason max_length."""
    customer, agent = call_audio(1.5)

    async def scenario() -> list[str]:
        async with monitor(plain_config(), max_call_s=1) as running:
            ws = await watcher(running)
            async with session(running) as client:
                await client.open()
                await send_call_audio(client, stereo(customer, agent), 2)
                await client.refused("--ingest-max-call-s")
            reasons = [m.reason for m in await until_closed(ws, streams_of())
                       if isinstance(m, StreamCloseMessage)]
            await ws.close()
            return reasons

    assert run(scenario()) == ["max_length", "max_length"]


def test_vanished_client_closes_its_streams_as_disconnected() -> None:
    """The WebSocket drops mid-call without close: streams close with reason disconnected."""
    async def scenario() -> list[str]:
        async with monitor(plain_config()) as running:
            ws = await watcher(running)
            async with session(running) as client:
                await client.open()
                await send_call_audio(client, stereo(*call_audio(0.5)), 2)
                client.ws.transport.abort()  # no close message, no closing handshake
            reasons = [m.reason for m in await until_closed(ws, streams_of())
                       if isinstance(m, StreamCloseMessage)]
            await ws.close()
            return reasons

    assert run(scenario()) == ["disconnected", "disconnected"]


def test_connection_probe_is_answered_without_a_call() -> None:
    """An open with the null conversation id (Genesys' probe): opened and closed, no streams."""
    async def scenario() -> dict[str, Any]:
        async with monitor(plain_config()) as running:
            async with session(running) as client:
                opened = await client.open(conversation=NULL_UUID)
                assert opened["parameters"]["media"][0]["channels"] == ["external", "internal"]
                await client.close()
            assert running.desk is not None and running.desk.live == 0
            return running.connector("audiohook").stats()

    stats = run(scenario())
    assert stats["probes"] == 1 and stats["calls"] == 0


def test_shutdown_disconnects_live_sessions() -> None:
    """At shutdown a live session gets disconnect (completed) and 1001; streams say shutdown."""
    async def scenario() -> tuple[dict[str, Any], int | None, list[str]]:
        running_monitor = monitor(plain_config())
        running = await running_monitor.__aenter__()
        ws = await watcher(running)
        client_cm = session(running)
        client = await client_cm.__aenter__()
        await client.open()
        await client.audio(stereo(*call_audio(0.5)), RATE)
        closing = asyncio.ensure_future(running_monitor.__aexit__(None, None, None))
        message = await client.expect("disconnect")
        with pytest.raises(ConnectionClosed):
            await client.receive()
        reasons = [m.reason for m in await until_closed(ws, streams_of())
                   if isinstance(m, StreamCloseMessage)]
        await closing
        await client_cm.__aexit__(None, None, None)
        return message["parameters"], client.ws.close_code, reasons

    parameters, code, reasons = run(scenario())
    assert parameters["reason"] == "completed" and code == 1001
    assert reasons == ["shutdown", "shutdown"]
