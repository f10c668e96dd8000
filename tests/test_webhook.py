"""Webhooks without leaking: header credentials, redacted URLs, no redirects, HMAC signatures;
alert bodies that say why an alert ended."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.alerts import AlertMonitor, parse_rule
from server.errors import ServerError
from server.hub import EventHub
from server.session import ModelInfo
from server.webhook import (
    SIGNATURE_HEADER,
    WebhookConfig,
    WebhookSender,
    read_credential,
    redact_url,
    sign,
    verify_signature,
)
from streamer.events import EngineStats, SpeechEnd, SpeechStart, WindowLabel
from tests.conftest import REPO, TIMEOUT_S

TOKEN = "tok-3f9c2a71b0d4-very-secret"
SECRET = "whsec-5e1d0c9b8a7f"


class Receiver:
    """An outer-edge fake: a tiny HTTP receiver keeping each POST's headers and body."""

    def __init__(self, statuses: list[int], location: str = "") -> None:
        self.statuses = statuses
        self.location = location
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.base = ""  # host:port once started

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((lines[0], headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        extra = f"Location: {self.location}\r\n" if self.location else ""
        writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close"
                     "\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 2))  # type: ignore[arg-type]


def test_redact_url_drops_userinfo_query_and_fragment() -> None:
    """Logged URLs keep scheme, host, port and path only."""
    assert redact_url("https://u:p@hooks.example.org:8443/a/b?token=x#f") == (
        "https://hooks.example.org:8443/a/b")
    assert redact_url("http://[::1]:9/x?k=v") == "http://[::1]:9/x"


def test_userinfo_url_is_refused_with_a_clear_error_that_hides_it() -> None:
    """A user:password@ URL fails validation, and the error does not repeat the password."""
    with pytest.raises(ServerError, match="user:password@") as info:
        WebhookConfig("https://alice:hunter2@hooks.example.org/x")
    assert "hunter2" not in str(info.value)


def test_secrets_are_not_in_the_config_repr() -> None:
    """Token and secret stay out of repr (and so out of any log of the settings)."""
    config = WebhookConfig("http://127.0.0.1:9/x", token=TOKEN, secret=SECRET)
    assert TOKEN not in repr(config) and SECRET not in repr(config)


def test_sign_and_verify_round_trip_and_reject_tampering_and_replays() -> None:
    """verify_signature accepts a fresh signature only for the same body and secret."""
    body = b'{"type":"alert"}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert not verify_signature(SECRET, header, body + b" ", now=now)
    assert not verify_signature("other", header, body, now=now)
    assert not verify_signature(SECRET, header, body, now=now + 301)  # a replay, later
    assert not verify_signature(SECRET, "garbage", body, now=now)


def test_posts_carry_bearer_token_and_a_valid_signature_and_logs_hide_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each POST has the Bearer header and a verifiable signature; no log line leaks."""
    caplog.set_level(logging.DEBUG, logger="server.webhook")

    async def scenario() -> tuple[Receiver, WebhookSender]:
        async with Receiver([503]) as hook:
            url = f"http://{hook.base}/hook?key=query-secret"
            sender = WebhookSender(WebhookConfig(url, token=TOKEN, secret=SECRET,
                                                 backoff_initial_s=0.05))
            async with sender:
                sender.submit('{"type":"alert","v":1}')
            return hook, sender

    hook, sender = run(scenario())  # type: ignore[misc]
    assert (sender.sent, sender.failed, sender.retries) == (1, 0, 1)
    assert len(hook.requests) == 2
    for line, headers, body in hook.requests:
        assert line.startswith("POST /hook?key=query-secret ")
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body,
                                now=time.time())
    text = caplog.text
    assert "query-secret" not in text and TOKEN not in text and SECRET not in text
    assert f"http://{hook.base}/hook" in text  # the redacted URL is what is logged


def test_redirect_is_a_failure_not_followed() -> None:
    """A 302 is counted as a failed (and redirected) alert; the Location is never fetched."""

    async def scenario() -> tuple[Receiver, Receiver, WebhookSender]:
        async with Receiver([]) as target, Receiver([302]) as hook:
            hook.location = f"http://{target.base}/elsewhere"
            sender = WebhookSender(WebhookConfig(f"http://{hook.base}/hook"))
            async with sender:
                sender.submit('{"type":"alert","v":1}')
            return hook, target, sender

    hook, target, sender = run(scenario())  # type: ignore[misc]
    assert (sender.sent, sender.failed, sender.redirects) == (0, 1, 1)
    assert len(hook.requests) == 1 and target.requests == []


def test_credentials_come_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_credential takes a file's first line, else the variable; empty files are errors."""
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert read_credential(path, "EM_TEST_TOKEN", "webhook token") == TOKEN
    monkeypatch.setenv("EM_TEST_TOKEN", "from-env")
    assert read_credential(None, "EM_TEST_TOKEN", "webhook token") == "from-env"
    monkeypatch.delenv("EM_TEST_TOKEN")
    assert read_credential(None, "EM_TEST_TOKEN", "webhook token") is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServerError, match="is empty"):
        read_credential(tmp_path / "empty", "EM_TEST_TOKEN", "webhook token")


def test_run_refuses_a_userinfo_webhook_url_with_one_line() -> None:
    """``run --webhook https://u:p@host/x`` exits 2 with one line that hides the password."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "run", "--source", "none", "--port", "0", "--no-store",
         "--webhook", "https://u:hunter2@hooks.example.org/x"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S * 2,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "user:password@" in errors[0], result.stderr
    assert "hunter2" not in result.stderr


def test_an_alert_ended_by_silence_is_posted_with_its_reason() -> None:
    """A stream quiet past the alert gap: the next stats tick ends its alert, and the webhook
    body (the /ws frame) says why and for how much speech it held."""
    labels = ("Angry", "Happy")

    async def scenario() -> tuple[Receiver, list[str]]:
        async with Receiver([]) as hook:
            sender = WebhookSender(WebhookConfig(f"http://{hook.base}/hook"))
            async with sender:
                info = ModelInfo(name="m", labels=labels, window_s=2.0, hop_s=0.5,
                                 sample_rate_hz=16000)
                alerts = AlertMonitor([parse_rule("angry>=0.5 for 0.5s")], labels, max_gap_s=10)
                posted: list[str] = []

                def on_alert(text: str) -> None:
                    posted.append(text)
                    sender.submit(text)

                async with EventHub(info, alerts=alerts, on_alert=on_alert) as hub:
                    now = time.time()
                    hub.publish_event(SpeechStart("s", 0.0, now))
                    for end in (2.0, 2.5):
                        hub.publish_event(WindowLabel("s", int(end * 2), end - 2, end, now,
                                                      (0.9, 0.1), "Angry", 0.9, "Angry", 0.9,
                                                      (0.9, 0.1)))
                    hub.publish_event(SpeechEnd("s", 0.0, 2.8, now))
                    hub.publish_stats(EngineStats(now, 0.0, 2, 0, 0, 0))  # quiet 0 s: on
                    hub.publish_stats(EngineStats(now + 60, 0.0, 2, 0, 0, 0))  # 60 s: ended
            return hook, posted

    hook, posted = run(scenario())  # type: ignore[misc]
    bodies = [json.loads(body) for _, _, body in hook.requests]
    assert [body.encode() for body in posted] == [body for _, _, body in hook.requests]
    assert [(b["state"], b["reason"], b["speech_s"], b["at_s"]) for b in bodies] == [
        ("start", "", 0.5, 2.5), ("end", "silence", 0.5, 2.5)
    ]
