"""Credentials, roles, logins, Origin/Host checks, methods, bodies: real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client.api import EventClient
from client.auth import read_token
from client.errors import ClientError
from client.push import push_file
from server.auth import (
    Credentials,
    OriginPolicy,
    SecurityConfig,
    SessionStore,
    cookie_value,
    grants,
    load_credentials,
    login_token,
    normalize_host,
    normalize_origin,
    parse_token_file,
)
from server.cli import main
from server.config import ServerConfig
from server.errors import ServerError
from server.monitor import Monitor
from streamer.engine import EngineConfig
from streamer.models.loading import load_model
from streamer.protocol.messages import ErrorMessage, Hello, decode
from streamer.testing import speech_like
from tests.conftest import TIMEOUT_S

VIEW = "view-token-0123456789abcdef"
INGEST = "ingest-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
CREDENTIALS = Credentials.from_tokens([("view", VIEW), ("ingest", INGEST), ("admin", ADMIN)])


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundled_model() -> Any:
    return load_model(None, device="cpu")


@asynccontextmanager
async def monitor(model: Any, **overrides: Any) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor on 127.0.0.1:0 (tokens unless overridden)."""
    security: dict[str, Any] = {"credentials": CREDENTIALS}
    security.update(overrides)
    config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                          security=SecurityConfig(**security))
    async with Monitor(model, engine_config=EngineConfig(), server_config=config) as running:
        yield running


def request(port: int, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One HTTP request; the response with its body read (``.data``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.data = response.read()  # type: ignore[attr-defined]
        return response
    finally:
        conn.close()


def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def health(port: int, **headers: str) -> dict[str, Any]:
    response = request(port, "GET", "/healthz", headers=headers)
    assert response.status == 200
    return dict(json.loads(response.data))  # type: ignore[attr-defined]


async def first_message(url: str, headers: list[tuple[str, str]] | None = None) -> Any:
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT_S) as ws:
        return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def status_of(url: str, headers: list[tuple[str, str]] | None = None) -> int:
    """The HTTP status a WebSocket handshake is refused with."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers, open_timeout=TIMEOUT_S):
            pass
    return int(info.value.response.status_code)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


# -- the pure core -------------------------------------------------------------------------------


def test_token_file_lines_and_errors_never_quote_tokens() -> None:
    """ROLE:TOKEN lines parse; bad lines name the line number and never echo the token."""
    text = f"# tokens\n\nview:{VIEW}\nADMIN : {ADMIN}\ningest:{INGEST}\ningest:{INGEST}x\n"
    assert parse_token_file(text) == [("view", VIEW), ("admin", ADMIN), ("ingest", INGEST),
                                      ("ingest", INGEST + "x")]
    for bad, match in ((f"{VIEW}\n", "line 1: expected ROLE:TOKEN"),
                       (f"\nroot:{VIEW}\n", "line 2: unknown role"),
                       ("view:short\n", "16-512 characters"),
                       ("view:has spaces in it 0123456789\n", "only letters")):
        with pytest.raises(ServerError, match=match) as info:
            parse_token_file(bad)
        assert VIEW not in str(info.value) and "short" not in str(info.value)
        assert "\n" not in str(info.value)


def test_credentials_compare_roles_and_hide_tokens() -> None:
    """A token maps to its role, unknown ones to None; repr shows counts; reuse is refused."""
    assert CREDENTIALS.role_of(VIEW) == "view" and CREDENTIALS.role_of(ADMIN) == "admin"
    assert CREDENTIALS.role_of(VIEW + "x") is None and CREDENTIALS.role_of(None) is None
    assert CREDENTIALS.roles == ("ingest", "view", "admin") and CREDENTIALS.configured
    assert VIEW not in repr(CREDENTIALS) and "view=1" in repr(CREDENTIALS)
    assert not Credentials().configured and Credentials().role_of(VIEW) is None
    with pytest.raises(ServerError, match="its own"):
        Credentials.from_tokens([("view", VIEW), ("ingest", VIEW)])
    assert grants("admin", "view") and grants("view", "view") and grants("ingest", "ingest")
    assert not grants("admin", "ingest") and not grants("ingest", "view")
    assert not grants("view", "admin") and not grants(None, "view")


def test_load_credentials_reads_file_and_environment(tmp_path: Path) -> None:
    """Tokens come from the token file and the EMOTION_MONITOR_*_TOKEN variables."""
    path = tmp_path / "tokens"
    path.write_text(f"view:{VIEW}\n")
    path.chmod(0o600)
    env = {"EMOTION_MONITOR_INGEST_TOKEN": INGEST}
    loaded = load_credentials(path, env)
    assert loaded.role_of(VIEW) == "view" and loaded.role_of(INGEST) == "ingest"
    assert load_credentials(None, {}).configured is False
    with pytest.raises(ServerError, match="cannot read"):
        load_credentials(tmp_path / "missing", {})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ServerError, match="no ROLE:TOKEN"):
        load_credentials(tmp_path / "empty", {})
    with pytest.raises(ServerError, match="EMOTION_MONITOR_VIEW_TOKEN"):
        load_credentials(None, {"EMOTION_MONITOR_VIEW_TOKEN": "short"})


def test_client_token_file_alone_or_by_role(tmp_path: Path) -> None:
    """A client token file holds the token alone or ROLE:TOKEN lines; env is the fallback."""
    alone = tmp_path / "alone"
    alone.write_text(f"{VIEW}\n")
    assert read_token(alone, roles=("view",), environ={}) == VIEW
    lines = tmp_path / "lines"
    lines.write_text(f"ingest:{INGEST}\nadmin:{ADMIN}\n")
    assert read_token(lines, roles=("view", "admin"), environ={}) == ADMIN
    assert read_token(lines, roles=("ingest",), environ={}) == INGEST
    with pytest.raises(ClientError, match="no token for view"):
        read_token(lines, roles=("view",), environ={})
    assert read_token(None, roles=("view",), environ={"EMOTION_MONITOR_VIEW_TOKEN": VIEW}) == VIEW
    assert read_token(None, roles=("view",), environ={}) is None


def test_session_store_expires_revokes_and_evicts() -> None:
    """Sessions carry a role until they expire or are revoked; the store stays bounded."""
    store = SessionStore(ttl_s=10, max_sessions=2)
    first = store.create("view", now=0.0)
    assert first != VIEW and len(first) >= 40
    assert store.role_of(first, now=5.0) == "view" and store.role_of("nope", now=5.0) is None
    assert store.role_of(first, now=10.0) is None  # expired
    second, third = store.create("admin", 20.0), store.create("view", 21.0)
    assert store.revoke(third) and store.role_of(third, 21.0) is None
    store.create("view", 22.0)
    store.create("view", 23.0)  # full: the oldest (second) goes
    assert store.role_of(second, 23.0) is None and store.evicted == 1 and len(store) == 2


def test_origin_and_host_policy() -> None:
    """Own origins and names pass by default; other ports, schemes, names and 'null' do not."""
    policy = OriginPolicy.build("127.0.0.1", 8765, https=False)
    assert policy.host_allowed("127.0.0.1:8765") and policy.host_allowed("LOCALHOST.")
    assert not policy.host_allowed("evil.example:8765") and not policy.host_allowed(None)
    assert policy.origin_allowed(None) and policy.origin_allowed("http://localhost:8765")
    for origin in ("http://127.0.0.1:8000", "https://127.0.0.1:8765", "null",
                   "http://evil.example:8765", "http://127.0.0.1:8765/x"):
        assert not policy.origin_allowed(origin), origin
    v6 = OriginPolicy.build("::1", 80, https=True, allow_origins=["https://Mon.Example.com"])
    assert v6.host_allowed("[::1]:80") and v6.host_allowed("localhost")
    assert v6.origin_allowed("https://[::1]:80") and v6.origin_allowed("https://mon.example.com")
    wide = OriginPolicy.build("0.0.0.0", 1, https=False, allow_hosts=["mon.example.com"])
    assert wide.hosts == {"mon.example.com"} and not wide.host_allowed("0.0.0.0")
    assert OriginPolicy.build("0.0.0.0", 1, https=False, allow_hosts=["*"]).host_allowed("x.y")
    assert normalize_host("[::1]:99") == "::1" and normalize_host("a b") is None
    assert normalize_origin("http://user:pw@host") is None
    with pytest.raises(ServerError, match="--allow-origin"):
        OriginPolicy.build("127.0.0.1", 1, https=False, allow_origins=["ftp://x"])


def test_login_form_and_cookie_parsing() -> None:
    """The login body's token field and the session cookie are found; oddities give None."""
    assert login_token(f"token={VIEW}".encode()) == VIEW
    assert login_token(b"token=a&token=b") is None and login_token(b"\xff") is None
    assert login_token(b"other=1") is None
    assert cookie_value(["a=1; em_session=abc; b=2"]) == "abc"
    assert cookie_value(["em_sessionx=1"]) is None and cookie_value([]) is None


def test_config_refuses_exposed_binds_without_tokens() -> None:
    """A non-loopback host needs tokens; a wildcard host also needs --allow-host."""
    with pytest.raises(ServerError, match="no token is configured"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ServerError, match="--allow-host"):
        ServerConfig(host="0.0.0.0", security=SecurityConfig(credentials=CREDENTIALS))
    ServerConfig(host="0.0.0.0", security=SecurityConfig(credentials=CREDENTIALS,
                                                         allow_hosts=("mon.example.com",)))
    ServerConfig(host="::1")  # loopback without tokens is fine
    with pytest.raises(ServerError, match="go together"):
        SecurityConfig(tls_cert=Path("c.pem"))


def test_cli_bad_security_flags_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exposed binds without tokens, unreadable token files and half TLS settings exit 2."""
    for name in ("INGEST", "VIEW", "ADMIN"):
        monkeypatch.delenv(f"EMOTION_MONITOR_{name}_TOKEN", raising=False)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"view:{VIEW}\n")
    cases = [
        (["--host", "0.0.0.0"], "no token is configured"),
        (["--host", "192.0.2.1"], "not a loopback address"),
        (["--host", "0.0.0.0", "--token-file", str(tokens)], "--allow-host"),
        (["--token-file", str(tmp_path / "missing")], "cannot read"),
        (["--tls-cert", str(tokens)], "go together"),
        (["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
         "no such file"),
        (["--allow-origin", "nope"], "--allow-origin"),
    ]
    for extra, match in cases:
        code = main(["run", "--source", "none", "--no-store", "--port", "0", *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert match in err and err.count("\n") == 1, (extra, err)
        assert VIEW not in err
    for command in (["watch", "--token-file", str(tmp_path / "missing")],
                    ["push", "x.wav", "--stream", "s", "--ca-file", str(tokens)]):
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (command, err)


# -- a real server -------------------------------------------------------------------------------


def test_ws_and_ingest_need_the_right_role(bundled_model: Any, tmp_path: Path) -> None:
    """/ws takes view or admin tokens, /ingest only ingest tokens; refusals are counted."""
    path = tmp_path / "call.wav"
    sf.write(path, speech_like(1.0, rate_hz=8000), 8000, subtype="PCM_16")

    async def scenario() -> None:
        async with monitor(bundled_model) as m:
            assert isinstance(await first_message(m.ws_url, bearer(VIEW)), Hello)
            assert isinstance(await first_message(m.ws_url, bearer(ADMIN)), Hello)
            assert await status_of(m.ws_url) == 401
            assert await status_of(m.ws_url, bearer(VIEW + "x")) == 401
            assert await status_of(m.ws_url, bearer(INGEST)) == 403
            assert await status_of(m.ingest_url) == 401
            assert await status_of(m.ingest_url, bearer(VIEW)) == 403
            assert await status_of(m.ingest_url, bearer(ADMIN)) == 403
            with pytest.raises(ClientError, match="401"):
                await push_file(path, m.ingest_url, stream="c", fast=True)
            result = await push_file(path, m.ingest_url, stream="c", fast=True, token=INGEST)
            assert result.streams == ("c/ch0",)
            client = EventClient(m.ws_url, reconnect=True)  # no token: fails at once
            with pytest.raises(ClientError, match="401"):
                async for _ in client.events():
                    pass
            async with EventClient(m.ws_url, token=VIEW) as viewer:
                async for event in viewer.events():
                    assert isinstance(event, Hello)
                    break
            details = await asyncio.to_thread(health, m.port, Authorization=f"Bearer {ADMIN}")
            assert details["refused"]["auth"] == 8, details

    run(scenario())


def test_healthz_details_only_for_admin(bundled_model: Any) -> None:
    """Anyone gets {ok, version}; admin gets streams, store and counters; no tokens = all."""

    async def scenario() -> None:
        async with monitor(bundled_model) as m:
            def check() -> None:
                public = health(m.port)
                assert set(public) == {"ok", "version"} and public["ok"] is True
                assert set(health(m.port, Authorization=f"Bearer {VIEW}")) == {"ok", "version"}
                full = health(m.port, Authorization=f"Bearer {ADMIN}")
                assert {"streams", "store", "clients", "refused", "version"} <= set(full)

            await asyncio.to_thread(check)
        async with monitor(bundled_model, credentials=Credentials()) as m:
            full = await asyncio.to_thread(health, m.port)
            assert "streams" in full and "refused" in full

    run(scenario())


def test_dashboard_login_sets_a_session_cookie_and_logout_ends_it(bundled_model: Any) -> None:
    """POST /login with a view token sets an HttpOnly, SameSite=Strict session cookie."""

    async def scenario() -> None:
        async with monitor(bundled_model) as m:
            form = {"Content-Type": "application/x-www-form-urlencoded"}

            def login(token: str) -> http.client.HTTPResponse:
                return request(m.port, "POST", "/login", body=f"token={token}".encode(),
                            headers={**form, "Origin": f"http://127.0.0.1:{m.port}"})

            page = await asyncio.to_thread(request, m.port, "GET", "/")
            assert (page.status, page.getheader("Location")) == (303, "/login")
            login_page = await asyncio.to_thread(request, m.port, "GET", "/login")
            assert login_page.status == 200 and b'action="/login"' in login_page.data  # type: ignore[attr-defined]
            for bad in (VIEW + "x", INGEST):
                refused = await asyncio.to_thread(login, bad)
                assert refused.status == 303 and refused.getheader("Location") == "/login?failed=1"
                assert refused.getheader("Set-Cookie") is None
            response = await asyncio.to_thread(login, VIEW)
            assert (response.status, response.getheader("Location")) == (303, "/")
            cookie = response.getheader("Set-Cookie") or ""
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            assert "Secure" not in cookie and VIEW not in cookie
            session = cookie.split(";")[0]
            assert session.startswith("em_session=")
            dashboard = await asyncio.to_thread(request, m.port, "GET", "/",
                                                headers={"Cookie": session})
            assert dashboard.status == 200 and b"connection-state" in dashboard.data  # type: ignore[attr-defined]
            assert isinstance(await first_message(m.ws_url, [("Cookie", session)]), Hello)
            # a view session gives no health details and never opens /ingest
            assert set(await asyncio.to_thread(health, m.port, Cookie=session)) == {"ok",
                                                                                  "version"}
            assert await status_of(m.ingest_url, [("Cookie", session)]) == 401
            out = await asyncio.to_thread(request, m.port, "POST", "/logout",
                                          headers={"Cookie": session})
            assert out.status == 303 and "Max-Age=0" in (out.getheader("Set-Cookie") or "")
            assert await status_of(m.ws_url, [("Cookie", session)]) == 401
            admin = (await asyncio.to_thread(login, ADMIN)).getheader("Set-Cookie") or ""
            details = await asyncio.to_thread(health, m.port, Cookie=admin.split(";")[0])
            assert details["refused"]["login"] == 2 and details["sessions"] == 1

    run(scenario())


def test_origin_and_host_checks_on_a_real_server(bundled_model: Any) -> None:
    """Foreign origins get 403 on /ws, /ingest and /login; foreign Host names get 421."""

    async def scenario() -> None:
        async with monitor(bundled_model, credentials=Credentials(),
                           allow_origins=("https://mon.example.com",)) as m:
            own = [("Origin", f"http://127.0.0.1:{m.port}")]
            assert isinstance(await first_message(m.ws_url, own), Hello)
            local = [("Origin", f"http://localhost:{m.port}")]
            assert isinstance(await first_message(m.ws_url, local), Hello)
            extra = [("Origin", "https://mon.example.com")]
            assert isinstance(await first_message(m.ws_url, extra), Hello)
            for origin in (f"http://127.0.0.1:{m.port + 1}", "null", "http://evil.example"):
                assert await status_of(m.ws_url, [("Origin", origin)]) == 403
                assert await status_of(m.ingest_url, [("Origin", origin)]) == 403

            def check() -> None:
                foreign = {"Origin": "http://evil.example"}
                assert request(m.port, "POST", "/login", body=b"token=x", headers=foreign).status \
                    == 403
                for host in ("evil.example", f"evil.example:{m.port}", "127.0.0.2"):
                    assert request(m.port, "GET", "/", headers={"Host": host}).status == 421
                    assert request(m.port, "GET", "/healthz", headers={"Host": host}).status == 421
                assert request(m.port, "GET", "/", headers={"Host": f"localhost:{m.port}"}).status \
                    == 200
                answer = raw_http(m.port, b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host at all
                assert answer.startswith(b"HTTP/1.1 421 ")
                refused = health(m.port)["refused"]
                assert refused["origin"] == 7 and refused["host"] == 7, refused

            await asyncio.to_thread(check)
            ws_host = [("Host", "evil.example")]
            with pytest.raises(InvalidStatus, match="421"):
                async with connect(m.ws_url, additional_headers=ws_host):
                    pass

    run(scenario())


def test_other_methods_get_405_and_bodies_400_or_413(bundled_model: Any) -> None:
    """Only GET (and POST /login, /logout) is answered; bodies get 400, or 413 when too big."""

    async def scenario() -> None:
        async with monitor(bundled_model, credentials=Credentials()) as m:
            def check() -> None:
                for method, path in (("PUT", "/"), ("DELETE", "/ws"), ("POST", "/"),
                                     ("HEAD", "/"), ("OPTIONS", "/healthz"), ("PATCH", "/x"),
                                     ("GET", "/logout")):
                    response = request(m.port, method, path)
                    assert response.status == 405, (method, path)
                    assert response.getheader("Allow") in ("GET", "POST"), (method, path)
                assert request(m.port, "GET", "/login").getheader("Location") == "/"
                assert request(m.port, "GET", "/", body=b"hello").status == 400
                host = f"Host: 127.0.0.1:{m.port}\r\n".encode()
                big = raw_http(m.port, b"POST /login HTTP/1.1\r\n" + host +
                               b"Content-Length: 100000\r\n\r\n")
                assert big.startswith(b"HTTP/1.1 413 "), big[:80]
                chunked = raw_http(m.port, b"POST /login HTTP/1.1\r\n" + host +
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                assert chunked.startswith(b"HTTP/1.1 400 "), chunked[:80]
                twice = raw_http(m.port, b"GET / HTTP/1.1\r\n" + host +
                                 b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab")
                assert twice.startswith(b"HTTP/1.1 400 "), twice[:80]
                long_line = raw_http(m.port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
                assert long_line.startswith(b"HTTP/1.1 414 ")
                assert request(m.port, "GET", "/").status == 200  # still serving
                refused = health(m.port)["refused"]
                assert refused["method"] == 7 and refused["body"] == 4, refused

            await asyncio.to_thread(check)

    run(scenario())


def test_oversized_integers_and_nan_get_bad_json_not_1011(bundled_model: Any) -> None:
    """A 5,000-digit integer, NaN or "v": true gets an error reply; the connection stays open."""

    async def scenario() -> None:
        async with monitor(bundled_model, credentials=Credentials()) as m:
            async with connect(m.ws_url) as ws:
                assert isinstance(decode(await ws.recv()), Hello)
                frames = ['{"type":"subscribe","v":1,"streams":[],"n":' + "9" * 5000 + "}",
                          '{"type":"subscribe","v":NaN}',
                          '{"type":"subscribe","v":true,"streams":[]}']
                codes = []
                for frame in frames:
                    await ws.send(frame)
                    reply = decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                    assert isinstance(reply, ErrorMessage)
                    codes.append(reply.code)
                assert codes == ["bad_json", "bad_json", "bad_version"]
                await ws.send('{"type":"subscribe","v":1,"streams":[]}')
                await ws.ping()

    run(scenario())

