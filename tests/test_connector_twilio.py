"""Twilio Media Streams: real server on 127.0.0.1:0, a sender that speaks Twilio's side exactly.

The sender writes each message as Twilio puts it on the wire: compact JSON text frames whose
keys come in the order of the documented examples (Twilio's "Media Streams - WebSocket
Messages" page), ``sequenceNumber``/``chunk``/``timestamp`` as strings, 20 ms of 8 kHz mu-law
per ``media`` payload, and an ``X-Twilio-Signature`` on the upgrade request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.config import IngestConfig, ServerConfig
from server.connectors.twilio import (
    TWILIO_AUTH_TOKEN_ENV,
    TwilioConfig,
    TwilioConnected,
    TwilioDtmf,
    TwilioMark,
    TwilioMedia,
    TwilioRejected,
    TwilioStart,
    TwilioStop,
    TwilioUnknown,
    add_twilio_flags,
    parse_twilio_message,
    twilio_config_from_args,
    twilio_signature,
    twilio_signature_ok,
)
from server.errors import ServerError
from server.monitor import Monitor
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    Hello,
    IngestStart,
    Message,
    StreamCloseMessage,
    StreamOpenMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.telephony import mulaw_encode
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S

TOKEN = "0123456789abcdef0123456789abcdef"  # the shape of a Twilio auth token (32 hex)
ACCOUNT = "AC" + "a" * 32
CALL = "CA" + "b" * 32
STREAM = "MZ" + "c" * 32


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundled_model() -> Any:
    return load_model(None, device="cpu")


@asynccontextmanager
async def monitor(model: Any | None = None, *, twilio: TwilioConfig | None = None,
                  **overrides: Any) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor with the Twilio connector on 127.0.0.1:0."""
    config = twilio if twilio is not None else TwilioConfig(auth_token=TOKEN)
    fields: dict[str, Any] = {"port": 0, "store_path": None, "shutdown_timeout_s": TIMEOUT_S,
                              "connectors": (config,)}
    fields.update(overrides)
    async with Monitor(model or FixedProbabilitiesModel(), engine_config=EngineConfig(),
                       server_config=ServerConfig(**fields)) as running:
        yield running


def sign(url: str, token: str = TOKEN) -> str:
    """The signature, written out here from Twilio's formula (GET: the URL alone)."""
    return base64.b64encode(hmac.new(token.encode(), url.encode(), hashlib.sha1).digest()).decode()


def twilio_url(running: Monitor, path: str = "/twilio") -> str:
    return f"ws://127.0.0.1:{running.port}{path}"


def signed_for(running: Monitor, path: str = "/twilio") -> str:
    """The URL Twilio signs for this server: wss:// and the Host it sends (host:port here)."""
    return f"wss://127.0.0.1:{running.port}{path}"


def mulaw_payloads(audio: np.ndarray) -> list[str]:
    """8 kHz float32 -> base64 mu-law payloads of 20 ms (160 bytes), as Twilio sends them."""
    code = mulaw_encode(float32_to_int16(audio)).tobytes()
    return [base64.b64encode(code[i : i + 160]).decode() for i in range(0, len(code), 160)]


class TwilioSide:
    """Twilio's side of one Media Stream, message for message, byte for byte."""

    def __init__(self, ws: ClientConnection, *, call: str = CALL, stream: str = STREAM) -> None:
        self.ws = ws
        self.call = call
        self.stream = stream
        self.sequence = 0
        self.chunks = {"inbound": 0, "outbound": 0}

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    async def connected(self) -> None:
        await self.ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')

    async def start(self, tracks: tuple[str, ...] = ("inbound", "outbound"),
                    params: dict[str, str] | None = None,
                    media_format: str = '{"encoding":"audio/x-mulaw","sampleRate":8000,'
                    '"channels":1}') -> None:
        listed = json.dumps(list(tracks), separators=(",", ":"))
        custom = json.dumps(params or {}, separators=(",", ":"))
        await self.ws.send(
            f'{{"event":"start","sequenceNumber":"{self._next()}","start":{{"accountSid":'
            f'"{ACCOUNT}","streamSid":"{self.stream}","callSid":"{self.call}","tracks":{listed},'
            f'"mediaFormat":{media_format},"customParameters":{custom}}},"streamSid":'
            f'"{self.stream}"}}')

    async def media(self, track: str, payload: str, *, sequence: int | None = None) -> None:
        self.chunks[track] += 1
        chunk = self.chunks[track]
        number = self._next() if sequence is None else sequence
        await self.ws.send(
            f'{{"event":"media","sequenceNumber":"{number}","media":{{"track":"{track}",'
            f'"chunk":"{chunk}","timestamp":"{20 * chunk}","payload":"{payload}"}},'
            f'"streamSid":"{self.stream}"}}')

    async def both(self, inbound: list[str], outbound: list[str]) -> None:
        """Both tracks, 20 ms at a time (inbound first in each step), unpaced."""
        for a, b in zip(inbound, outbound, strict=True):
            await self.media("inbound", a)
            await self.media("outbound", b)

    async def dtmf(self, digit: str) -> None:
        await self.ws.send(
            f'{{"event":"dtmf","streamSid":"{self.stream}","sequenceNumber":"{self._next()}",'
            f'"dtmf":{{"track":"inbound_track","digit":"{digit}"}}}}')

    async def mark(self, name: str) -> None:
        await self.ws.send(
            f'{{"event":"mark","sequenceNumber":"{self._next()}","streamSid":"{self.stream}",'
            f'"mark":{{"name":"{name}"}}}}')

    async def stop(self) -> None:
        await self.ws.send(
            f'{{"event":"stop","sequenceNumber":"{self._next()}","stop":{{"accountSid":'
            f'"{ACCOUNT}","callSid":"{self.call}"}},"streamSid":"{self.stream}"}}')


@asynccontextmanager
async def twilio_call(running: Monitor, *, signature: str | None = None, path: str = "/twilio",
                      **side: Any) -> AsyncIterator[TwilioSide]:
    """A signed connection to the Twilio path, as Twilio opens it."""
    headers = {"X-Twilio-Signature": signature or sign(signed_for(running, path))}
    async with connect(twilio_url(running, path), additional_headers=headers) as ws:
        yield TwilioSide(ws, **side)


async def closed_with(side: TwilioSide) -> int | None:
    """Wait for the server to close the connection; its close code."""
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(side.ws.recv(), TIMEOUT_S)
    return side.ws.close_code


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


def health(running: Monitor) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        return json.loads(connection.getresponse().read())  # type: ignore[no-any-return]
    finally:
        connection.close()


async def twilio_stats(running: Monitor) -> dict[str, Any]:
    return (await asyncio.to_thread(health, running))["connectors"]["twilio"]  # type: ignore[no-any-return]


SPEECH = speech_like(3.0, rate_hz=8000)
SILENCE = np.zeros(SPEECH.size, np.float32)


# -- pure parts: the signature ------------------------------------------------------------------


def test_signature_matches_twilios_published_vector() -> None:
    """The helper libraries' vector: token 12345, a POST with five parameters."""
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309",
              "To": "+18005551212", "Caller": "+14158675309"}
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # the same request signed with the default port written out (twilio-python's vector)
    assert twilio_signature("12345", url.replace(".com", ".com:443"), params) == (
        "kvajT1Ptam85bY51eRf/AJRuM3w=")


def test_signature_check_takes_each_port_form_and_nothing_else() -> None:
    """wss://host/path and wss://host:443/path sign alike for the check; other URLs do not."""
    url = "wss://calls.example.com/twilio"
    assert twilio_signature(TOKEN, url) == sign(url)
    assert twilio_signature_ok(TOKEN, url, sign(url))
    assert twilio_signature_ok(TOKEN, "wss://calls.example.com:443/twilio", sign(url))
    assert twilio_signature_ok(TOKEN, url, sign("wss://calls.example.com:443/twilio"))
    assert not twilio_signature_ok(TOKEN, url, sign("wss://calls.example.com/other"))
    assert not twilio_signature_ok(TOKEN, url, sign("https://calls.example.com/twilio"))
    assert not twilio_signature_ok(TOKEN, url, sign(url, token="another-token"))
    assert not twilio_signature_ok(TOKEN, url, None)
    assert not twilio_signature_ok(TOKEN, url, "")
    assert not twilio_signature_ok(TOKEN, "wss://calls.example.com:8443/twilio", sign(url))


# -- pure parts: the messages -------------------------------------------------------------------

# The documented examples (structure and values of Twilio's page; payload abbreviated there,
# a real one here), pretty-printed as the page shows them.
DOC_CONNECTED = """{
  "event": "connected",
  "protocol": "Call",
  "version": "1.0.0"
}"""
DOC_START = """{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "tracks": [ "inbound" ],
    "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
    "customParameters": { "FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob" }
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
DOC_MEDIA = """{
  "event": "media",
  "sequenceNumber": "3",
  "media": {
    "track": "outbound",
    "chunk": "1",
    "timestamp": "5",
    "payload": "no+JhoaJjpzSHxAKBgYJDA=="
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
DOC_STOP = """{
  "event": "stop",
  "sequenceNumber": "5",
  "stop": {
    "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
DOC_DTMF = """{
  "event": "dtmf",
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
  "sequenceNumber": "5",
  "dtmf": {
    "track": "inbound_track",
    "digit": "1"
  }
}"""
DOC_MARK = """{
  "event": "mark",
  "sequenceNumber": "4",
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
  "mark": {
    "name": "my label"
  }
}"""
SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


def test_documented_examples_parse_to_their_dataclasses() -> None:
    """Each example message of Twilio's page becomes its dataclass with its values."""
    assert parse_twilio_message(DOC_CONNECTED) == TwilioConnected("Call", "1.0.0")
    start = parse_twilio_message(DOC_START)
    assert start == TwilioStart(
        sequence=1, stream_sid=SID, account_sid="ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        call_sid="CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", tracks=("inbound",),
        custom_parameters=(("FirstName", "Jane"), ("LastName", "Doe"), ("RemoteParty", "Bob")))
    media = parse_twilio_message(DOC_MEDIA)
    assert isinstance(media, TwilioMedia)
    assert (media.sequence, media.track, media.chunk, media.timestamp_ms) == (3, "outbound", 1, 5)
    assert media.payload == base64.b64decode("no+JhoaJjpzSHxAKBgYJDA==")
    assert parse_twilio_message(DOC_STOP) == TwilioStop(5, SID)
    dtmf = parse_twilio_message(DOC_DTMF)
    assert dtmf == TwilioDtmf(5, SID, "inbound_track", "1") and "digit" not in repr(dtmf)
    assert parse_twilio_message(DOC_MARK) == TwilioMark(4, SID, "my label")
    assert parse_twilio_message('{"event":"clear","sequenceNumber":"9"}') == (
        TwilioUnknown("clear", 9))


def _edited(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_json"),
        ('["event", "media"]', "bad_json"),
        (b'{"event":"media"}', "binary_message"),
        ('{"sequenceNumber":"1"}', "bad_message"),
        ('{"event":"media","sequenceNumber":"2","streamSid":"MZ1"}', "bad_message"),
        (_edited(DOC_MEDIA, '"3"', '"three"'), "bad_message"),
        (_edited(DOC_MEDIA, '"chunk": "1"', '"chunk": "-1"'), "bad_message"),
        (_edited(DOC_MEDIA, "no+JhoaJjpzSHxAKBgYJDA==", "no+Jhoa*JjpzS"), "bad_base64"),
        (_edited(DOC_MEDIA, "no+JhoaJjpzSHxAKBgYJDA==", "no+JhoaJjpzSHxAKBgYJDA"), "bad_base64"),
        (_edited(DOC_START, "audio/x-mulaw", "audio/x-alaw"), "unsupported_format"),
        (_edited(DOC_START, '"sampleRate": 8000', '"sampleRate": 16000'), "unsupported_format"),
        (_edited(DOC_START, '"channels": 1', '"channels": 2'), "unsupported_format"),
        (_edited(DOC_START, '"channels": 1', '"channels": true'), "unsupported_format"),
        (_edited(DOC_START, '[ "inbound" ]', '[ "both_tracks" ]'), "bad_message"),
        (_edited(DOC_START, '[ "inbound" ]', '[ "inbound", "inbound" ]'), "bad_message"),
        (_edited(DOC_START, '[ "inbound" ]', "[]"), "bad_message"),
        (_edited(DOC_START, '"streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"\n}',
                 '"streamSid": "MZother"\n}'), "bad_message"),
        (_edited(DOC_START, '"customParameters": {', '"customParameters": [{'
                 ).replace('"Bob" }', '"Bob" }]'), "bad_message"),
    ],
)
def test_malformed_messages_get_one_code_each(message: str | bytes, code: str) -> None:
    """Each malformed case is refused with its own code and the close code for its kind."""
    with pytest.raises(TwilioRejected) as info:
        parse_twilio_message(message)
    assert info.value.code == code
    assert info.value.close == 1003


# -- configuration ------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_twilio_flags(parser)
    return parser.parse_args(list(argv))


def test_the_connector_is_off_without_a_token_and_refuses_half_a_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token: off; a --twilio-* flag without one: an error naming both ways to give it."""
    monkeypatch.delenv(TWILIO_AUTH_TOKEN_ENV, raising=False)
    assert twilio_config_from_args(_args()) is None
    with pytest.raises(ServerError, match="--twilio-path needs the Twilio auth token"):
        twilio_config_from_args(_args("--twilio-path", "/tw"))
    token_file = tmp_path / "twilio-token"
    token_file.write_text(TOKEN + "\n")
    config = twilio_config_from_args(_args("--twilio-auth-token-file", str(token_file),
                                    "--twilio-inbound-role", "agent"))
    assert config is not None and config.auth_token == TOKEN and config.path == "/twilio"
    assert config.roles == {"inbound": "agent", "outbound": "customer"}
    assert TOKEN not in repr(config)
    monkeypatch.setenv(TWILIO_AUTH_TOKEN_ENV, "from-the-environment")
    from_env = twilio_config_from_args(_args("--twilio-public-url", "wss://calls.example.com/twilio"))
    assert from_env is not None and from_env.auth_token == "from-the-environment"
    assert from_env.public_url == "wss://calls.example.com/twilio"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"auth_token": ""}, "auth token"),
        ({"auth_token": "two\nlines"}, "auth token"),
        ({"path": "twilio"}, "--twilio-path"),
        ({"path": "/twilio?x=1"}, "--twilio-path"),
        ({"public_url": "https://calls.example.com/twilio"}, "--twilio-public-url"),
        ({"public_url": "wss://calls.example.com/twilio?token=1"}, "--twilio-public-url"),
        ({"public_url": "wss:///twilio"}, "--twilio-public-url"),
        ({"inbound_role": "caller"}, "--twilio-inbound-role"),
    ],
)
def test_bad_settings_are_refused(fields: dict[str, Any], match: str) -> None:
    """A bad token, path, public URL or role is a ServerError naming the flag."""
    settings: dict[str, Any] = {"auth_token": TOKEN, **fields}
    with pytest.raises(ServerError, match=match):
        TwilioConfig(**settings)


# -- end to end ---------------------------------------------------------------------------------


def test_a_two_track_call_labels_each_party_and_ends_cleanly(bundled_model: Any) -> None:
    """Speech on both tracks: windows on <callSid>/customer and /agent; stop ends it (1000)."""
    streams = {f"{CALL}/customer", f"{CALL}/agent"}

    async def scenario() -> tuple[list[Message], int | None, dict[str, Any]]:
        async with monitor(bundled_model) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            async with twilio_call(running) as twilio:
                await twilio.connected()
                await twilio.start(params={"FirstName": "Jane", "queue": "billing"})
                customer = mulaw_payloads(np.concatenate([SPEECH, SILENCE]))
                agent = mulaw_payloads(np.concatenate([SILENCE[:8000], SPEECH,
                                                       SILENCE[8000:]]))
                await twilio.both(customer, agent)
                await twilio.stop()
                code = await closed_with(twilio)
            got = await until_closed(ws, streams)
            return got, code, await twilio_stats(running)

    got, code, stats = run(scenario())
    assert code == 1000
    opens = {m.stream: m for m in got if isinstance(m, StreamOpenMessage)}
    assert set(opens) == streams
    customer = opens[f"{CALL}/customer"]
    assert customer.sample_rate_hz == 8000
    assert customer.metadata == {
        "streamSid": STREAM, "accountSid": ACCOUNT, "tracks": "inbound,outbound",
        "param.FirstName": "Jane", "param.queue": "billing", "source": "twilio", "call": CALL,
        "role": "customer", "channel": "0", "channels": "2"}
    assert opens[f"{CALL}/agent"].metadata["role"] == "agent"
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert {w.stream for w in windows} == streams
    closes = [m for m in got if isinstance(m, StreamCloseMessage)]
    assert {c.reason for c in closes} == {"end"}
    assert stats["calls"] == 1 and stats["live"] == 0 and stats["refused"] == {}
    assert stats["frames"] == 2 * len(mulaw_payloads(np.concatenate([SPEECH, SILENCE])))


def test_inbound_role_flag_swaps_the_parties() -> None:
    """--twilio-inbound-role agent: the inbound track feeds <callSid>/agent."""

    async def scenario() -> list[Message]:
        config = TwilioConfig(auth_token=TOKEN, inbound_role="agent")
        async with monitor(twilio=config) as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            async with twilio_call(running) as twilio:
                await twilio.connected()
                await twilio.start(tracks=("inbound",))
                for payload in mulaw_payloads(SPEECH):
                    await twilio.media("inbound", payload)
                await twilio.stop()
                assert await closed_with(twilio) == 1000
            return await until_closed(ws, {f"{CALL}/agent"})

    got = run(scenario())
    assert [m.stream for m in got if isinstance(m, StreamOpenMessage)] == [f"{CALL}/agent"]
    assert any(isinstance(m, WindowMessage) for m in got)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_signature"),
        ({"X-Twilio-Signature": sign("wss://127.0.0.1/twilio", token="not-the-token")},
         "bad_signature"),
        ({"X-Twilio-Signature": "not base64 at all"}, "bad_signature"),
        ({"X-Twilio-Signature": sign("wss://elsewhere.example.com/twilio")}, "bad_signature"),
    ],
)
def test_the_signature_check_fails_closed(headers: dict[str, str], code: str) -> None:
    """A missing or wrong X-Twilio-Signature gets 403 before the upgrade, counted."""

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        async with monitor() as running:
            with pytest.raises(InvalidStatus) as info:
                async with connect(twilio_url(running), additional_headers=headers):
                    pass
            body = await asyncio.to_thread(health, running)
            return info.value.response.status_code, body["connectors"]["twilio"], body

    status, stats, body = run(scenario())
    assert status == 403
    assert stats["refused"] == {code: 1} and stats["calls"] == 0
    assert body["refused"]["twilio_signature"] == 1


def test_a_signature_for_the_local_url_is_refused_behind_a_public_url() -> None:
    """With --twilio-public-url the signature must be over that URL, not the local one."""
    public = "wss://calls.example.com/media"

    async def scenario() -> tuple[int, int | None]:
        async with monitor(twilio=TwilioConfig(auth_token=TOKEN, public_url=public)) as running:
            with pytest.raises(InvalidStatus) as info:
                async with twilio_call(running):
                    pass
            async with twilio_call(running, signature=sign(public)) as twilio:
                await twilio.connected()
                await twilio.start()
                await twilio.stop()
                return info.value.response.status_code, await closed_with(twilio)

    assert run(scenario()) == (403, 1000)


def test_without_a_twilio_token_there_is_no_twilio_endpoint() -> None:
    """A server without the connector configured answers the path with 404: nothing accepted."""

    async def scenario() -> int:
        async with monitor(connectors=()) as running:
            with pytest.raises(InvalidStatus) as info:
                async with twilio_call(running):
                    pass
            return info.value.response.status_code

    assert run(scenario()) == 404


async def _malformed_after(send: str, *, tracks: tuple[str, ...] = ("inbound", "outbound"),
                           start: bool = True) -> tuple[int | None, dict[str, Any],
                                                         list[Message]]:
    """Start a call (unless not), send 0.2 s of audio, then ``send``; the close and stats."""
    async with monitor() as running, connect(running.ws_url) as ws:
        assert isinstance(await receive(ws), Hello)
        async with twilio_call(running) as twilio:
            await twilio.connected()
            if start:
                await twilio.start(tracks=tracks)
                for payload in mulaw_payloads(SPEECH[:1600]):
                    await twilio.media("inbound", payload)
            await twilio.ws.send(send.replace("@SEQ", str(twilio.sequence + 1)))
            code = await closed_with(twilio)
        got = await until_closed(ws, {f"{CALL}/{r}" for r in ("customer", "agent")[
            :len(tracks)]}) if start else []
        return code, await twilio_stats(running), got


MEDIA = ('{"event":"media","sequenceNumber":"@SEQ","media":{"track":"inbound","chunk":"99",'
         f'"timestamp":"1980","payload":"AAAA"}},"streamSid":"{STREAM}"}}')


@pytest.mark.parametrize(
    ("send", "code", "close"),
    [
        ("{not json", "bad_json", 1003),
        (MEDIA.replace("AAAA", "AA*A"), "bad_base64", 1003),
        (MEDIA.replace('"@SEQ"', '"1"'), "out_of_order", 1008),
        (MEDIA.replace(STREAM, "MZ" + "d" * 32), "wrong_stream", 1008),
        (MEDIA.replace('"inbound"', '"outbound"'), "unexpected_track", 1008),
        ('{"event":"start","sequenceNumber":"@SEQ","start":{"accountSid":"AC1",'
         '"streamSid":"MZ2","callSid":"CA3","tracks":["inbound"],"mediaFormat":'
         '{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ2"}',
         "duplicate_start", 1008),
        ('{"event":"connected","protocol":"Call","version":"1.0.0"}', "unexpected_connected",
         1008),
    ],
)
def test_malformed_message_mid_call_closes_that_call(send: str, code: str, close: int) -> None:
    """A bad message mid-call: closed with its code, counted; the streams close with error."""
    got_code, stats, got = run(_malformed_after(send, tracks=("inbound",) if code ==
                                                "unexpected_track" else ("inbound", "outbound")))
    assert got_code == close
    assert stats["refused"] == {code: 1} and stats["live"] == 0
    closes = [m for m in got if isinstance(m, StreamCloseMessage)]
    assert closes and {c.reason for c in closes} == {"error"}


def test_binary_message_is_refused_with_1003() -> None:
    """Twilio sends only text: a binary message is binary_message, 1003."""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor() as running, twilio_call(running) as twilio:
            await twilio.connected()
            await twilio.start()
            await twilio.ws.send(b"\x00\x01")
            return await closed_with(twilio), await twilio_stats(running)

    code, stats = run(scenario())
    assert (code, stats["refused"]) == (1003, {"binary_message": 1})


@pytest.mark.parametrize(
    ("before", "code"),
    [
        (MEDIA.replace("@SEQ", "1"), "media_before_start"),
        (f'{{"event":"mark","sequenceNumber":"1","streamSid":"{STREAM}","mark":{{"name":"x"}}}}',
         "event_before_start"),
    ],
)
def test_audio_before_start_is_refused(before: str, code: str) -> None:
    """media (or a mark) before start: closed with 1008 and its code, no call opened."""
    got_code, stats, _ = run(_malformed_after(before, start=False))
    assert (got_code, stats["refused"], stats["calls"]) == (1008, {code: 1}, 0)


def test_wrong_media_format_is_refused_before_any_stream_opens() -> None:
    """A start with mediaFormat other than audio/x-mulaw 8000 1: 1003, nothing opened."""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor() as running, twilio_call(running) as twilio:
            await twilio.connected()
            await twilio.start(media_format='{"encoding":"audio/x-l16","sampleRate":16000,'
                               '"channels":1}')
            return await closed_with(twilio), await twilio_stats(running)

    code, stats = run(scenario())
    assert (code, stats["refused"], stats["calls"]) == (1003, {"unsupported_format": 1}, 0)


def test_unknown_events_dtmf_and_marks_are_counted_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unknown events are skipped, dtmf and mark counted (digits never logged); stop ends it."""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor() as running, twilio_call(running) as twilio:
            await twilio.connected()
            await twilio.start()
            await twilio.dtmf("7")
            await twilio.ws.send(f'{{"event":"futureEvent","sequenceNumber":'
                                 f'"{twilio._next()}","streamSid":"{STREAM}"}}')
            await twilio.mark("greeting-played")
            await twilio.both(mulaw_payloads(SPEECH[:800]), mulaw_payloads(SPEECH[:800]))
            await twilio.stop()
            return await closed_with(twilio), await twilio_stats(running)

    with caplog.at_level(logging.DEBUG):
        code, stats = run(scenario())
    assert code == 1000
    assert (stats["dtmf"], stats["marks"], stats["skipped"], stats["refused"]) == (1, 1, 1, {})
    assert stats["frames"] == 10
    ours = [r.getMessage() for r in caplog.records  # websockets' own DEBUG lines show frames
            if r.name.startswith(("server.", "streamer.")) and r.name != "server.websockets"]
    assert ours and not any('"7"' in line or "'7'" in line for line in ours)


def test_a_gap_in_sequence_numbers_is_counted_not_refused() -> None:
    """A skipped sequenceNumber is counted (sequence_gaps); the call goes on to a clean end.
    (This sender also skips ``connected``: it is taken as optional.)"""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor() as running, twilio_call(running) as twilio:
            await twilio.start()
            payload = mulaw_payloads(SPEECH[:160])[0]
            await twilio.media("inbound", payload, sequence=twilio.sequence + 2)
            twilio.sequence += 2
            await twilio.stop()
            return await closed_with(twilio), await twilio_stats(running)

    code, stats = run(scenario())
    assert (code, stats["sequence_gaps"], stats["refused"]) == (1000, 1, {})


def test_stop_before_start_is_a_clean_end_with_no_call() -> None:
    """A stream stopped before its start: close 1000, no call opened, nothing refused."""

    async def scenario() -> tuple[int | None, dict[str, Any]]:
        async with monitor() as running, twilio_call(running) as twilio:
            await twilio.connected()
            await twilio.stop()
            return await closed_with(twilio), await twilio_stats(running)

    code, stats = run(scenario())
    assert (code, stats["calls"], stats["refused"]) == (1000, 0, {})


def test_oversized_messages_are_refused_with_1009() -> None:
    """Over --ingest-max-frame-bytes: message_too_big, 1009; over 4x: websockets' 1009, counted."""

    async def scenario() -> list[tuple[int | None, dict[str, int]]]:
        results = []
        async with monitor(ingest=IngestConfig(max_frame_bytes=1024)) as running:
            for size in (2000, 5000):
                async with twilio_call(running) as twilio:
                    await twilio.connected()
                    await twilio.start()
                    await twilio.media("inbound", "A" * size)
                    results.append((await closed_with(twilio),
                                    (await twilio_stats(running))["refused"]))
        return results

    (first, after_first), (second, after_second) = run(scenario())
    assert (first, after_first) == (1009, {"message_too_big": 1})
    assert (second, after_second) == (1009, {"message_too_big": 2})


def test_the_shared_desk_limits_twilio_and_ingest_calls_together() -> None:
    """max_calls 1: a live Twilio call makes a second Twilio call and an /ingest call wait (1013);
    a second stream of a live callSid is duplicate_stream (1008)."""

    async def scenario() -> tuple[int | None, int | None, str, dict[str, Any]]:
        async with monitor(ingest=IngestConfig(max_calls=1)) as running:
            async with twilio_call(running) as first:
                await first.connected()
                await first.start()
                async with twilio_call(running, call="CA" + "e" * 32) as second:
                    await second.connected()
                    await second.start()
                    full = await closed_with(second)
                async with twilio_call(running, stream="MZ" + "f" * 32) as again:
                    await again.connected()
                    await again.start()
                    duplicate = await closed_with(again)
                async with connect(running.ingest_url) as pushed:
                    await pushed.send(encode(IngestStart("other", 8000, 1, "s16le")))
                    refused = decode(await asyncio.wait_for(pushed.recv(), TIMEOUT_S))
                await first.stop()
                assert await closed_with(first) == 1000
            return full, duplicate, getattr(refused, "code", ""), await twilio_stats(running)

    full, duplicate, ingest_code, stats = run(scenario())
    assert (full, duplicate, ingest_code) == (1013, 1008, "too_many_calls")
    assert stats["refused"] == {"too_many_calls": 1, "duplicate_stream": 1}


def test_a_silent_sender_is_closed_after_the_idle_timeout() -> None:
    """No message for --ingest-idle-timeout-s: idle_timeout, 1008; stream_close says so."""

    async def scenario() -> tuple[int | None, list[Message]]:
        async with monitor(ingest=IngestConfig(idle_timeout_s=0.3)) as running, \
                connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            async with twilio_call(running) as twilio:
                await twilio.connected()
                await twilio.start(tracks=("inbound",))
                code = await closed_with(twilio)  # then nothing more is sent
            return code, await until_closed(ws, {f"{CALL}/customer"})

    code, got = run(scenario())
    assert code == 1008
    assert [m.reason for m in got if isinstance(m, StreamCloseMessage)] == ["idle_timeout"]


def test_a_dropped_connection_ends_the_call_as_disconnected() -> None:
    """The connection closing before stop: stream_close reason disconnected, counted."""

    async def scenario() -> tuple[list[Message], dict[str, Any]]:
        async with monitor() as running, connect(running.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            async with twilio_call(running) as twilio:
                await twilio.connected()
                await twilio.start(tracks=("inbound",))
                await twilio.media("inbound", mulaw_payloads(SPEECH[:160])[0])
            got = await until_closed(ws, {f"{CALL}/customer"})
            return got, await twilio_stats(running)

    got, stats = run(scenario())
    assert [m.reason for m in got if isinstance(m, StreamCloseMessage)] == ["disconnected"]
    assert stats["disconnected"] == 1 and stats["live"] == 0


def test_shutdown_closes_live_calls_with_1001() -> None:
    """Stopping the server mid-call: the sender gets 1001, the streams close with shutdown."""

    async def scenario() -> int | None:
        running = await Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                                server_config=ServerConfig(
                                    port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                                    connectors=(TwilioConfig(auth_token=TOKEN),))).start()
        try:
            async with twilio_call(running) as twilio:
                await twilio.connected()
                await twilio.start()
                await twilio.media("inbound", mulaw_payloads(SPEECH[:160])[0])
                closing = asyncio.create_task(running.close())
                code = await closed_with(twilio)
                await closing
                return code
        finally:
            await running.close()

    assert run(scenario()) == 1001
