"""TLS: https:// and wss:// with a certificate the test makes; clients verify it with --ca-file."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from client.api import EventClient
from client.errors import ClientError
from client.push import push_file
from server.auth import Credentials, SecurityConfig
from server.config import ServerConfig
from server.errors import ServerError
from server.monitor import Monitor
from server.tls import server_context
from streamer.engine import EngineConfig
from streamer.models.loading import load_model
from streamer.protocol.messages import Hello
from streamer.testing import speech_like
from tests.conftest import REPO, TIMEOUT_S

VIEW = "view-token-0123456789abcdef"
INGEST = "ingest-token-0123456789abcdef"
CREDENTIALS = Credentials.from_tokens([("view", VIEW), ("ingest", INGEST)])


def make_certificate(folder: Path, name: str = "test") -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / f"{name}-ca.pem", folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundled_model() -> Any:
    return load_model(None, device="cpu")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@asynccontextmanager
async def tls_monitor(model: Any, cert: Path, key: Path) -> AsyncIterator[Monitor]:
    config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                          security=SecurityConfig(credentials=CREDENTIALS, tls_cert=cert,
                                                  tls_key=key))
    async with Monitor(model, engine_config=EngineConfig(), server_config=config) as running:
        yield running


def https_get(port: int, path: str, ca: Path, headers: dict[str, str] | None = None) -> Any:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT_S, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def test_wss_events_and_https_pages_with_a_ca_file(
    bundled_model: Any, certificate: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The server serves https:// and wss://; clients verify it against the test's CA."""
    ca, cert, key = certificate
    audio = tmp_path / "call.wav"
    sf.write(audio, speech_like(1.0, rate_hz=8000), 8000, subtype="PCM_16")

    async def scenario() -> None:
        async with tls_monitor(bundled_model, cert, key) as m:
            assert m.url.startswith("https://127.0.0.1:") and m.ws_url.startswith("wss://")
            assert m.ingest_url.startswith("wss://")
            async with EventClient(m.ws_url, token=VIEW, ca_file=ca) as client:
                async for event in client.events():
                    assert isinstance(event, Hello)
                    break
            result = await push_file(audio, m.ingest_url, stream="tls-call", fast=True,
                                     token=INGEST, ca_file=ca)
            assert result.streams == ("tls-call/ch0",)
            status, _, body = await asyncio.to_thread(https_get, m.port, "/healthz", ca)
            assert status == 200 and set(json.loads(body)) == {"ok", "version"}
            status, headers, _ = await asyncio.to_thread(https_get, m.port, "/", ca)
            assert status == 303 and dict(headers)["Location"] == "/login"
            # without the CA the certificate does not verify: a ClientError, no retry loop
            with pytest.raises(ClientError, match="does not verify"):
                async for _ in EventClient(m.ws_url, token=VIEW).events():
                    pass

    run(scenario())


def test_login_cookie_is_secure_over_tls(
    bundled_model: Any, certificate: tuple[Path, Path, Path]
) -> None:
    """Over TLS the session cookie carries Secure as well as HttpOnly and SameSite=Strict."""
    ca, cert, key = certificate

    async def scenario() -> None:
        async with tls_monitor(bundled_model, cert, key) as m:
            def login() -> str:
                context = ssl.create_default_context(cafile=str(ca))
                conn = http.client.HTTPSConnection("127.0.0.1", m.port, timeout=TIMEOUT_S,
                                                   context=context)
                try:
                    conn.request("POST", "/login", body=f"token={VIEW}".encode(), headers={
                        "Content-Type": "application/x-www-form-urlencoded"})
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 303
                    return response.getheader("Set-Cookie") or ""
                finally:
                    conn.close()

            cookie = await asyncio.to_thread(login)
            assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie

    run(scenario())


def test_bad_certificate_files_are_one_line_errors(
    certificate: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A key that does not match, a garbage file or a missing one is a one-line ServerError."""
    ca, cert, key = certificate
    _, other_cert, _ = make_certificate(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for c, k, match in ((other_cert, key, "cannot load"), (garbage, key, "cannot load"),
                        (cert, tmp_path / "missing.pem", "no such file")):
        with pytest.raises(ServerError, match=match) as info:
            server_context(c, k)
        assert "\n" not in str(info.value)
    assert isinstance(server_context(cert, key), ssl.SSLContext)
    del ca


def test_push_command_over_wss_with_token_file_and_ca_file(
    bundled_model: Any, certificate: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`emotion-monitor push FILE wss://... --token-file F --ca-file CA` sends the call."""
    ca, cert, key = certificate
    audio = tmp_path / "call.wav"
    sf.write(audio, speech_like(1.0, rate_hz=8000), 8000, subtype="PCM_16")
    token_file = tmp_path / "tokens"
    token_file.write_text(f"view:{VIEW}\ningest:{INGEST}\n")

    async def scenario() -> None:
        async with tls_monitor(bundled_model, cert, key) as m:
            command = [sys.executable, "-m", "server", "push", str(audio), m.ingest_url,
                       "--stream", "cli-call", "--fast", "--token-file", str(token_file),
                       "--ca-file", str(ca)]
            done = await asyncio.to_thread(
                subprocess.run, command, cwd=REPO, capture_output=True, text=True,
                timeout=TIMEOUT_S * 2,
            )
            assert done.returncode == 0, done.stderr
            assert "pushed 1.0 s" in done.stdout and INGEST not in done.stderr + done.stdout
            without = await asyncio.to_thread(
                subprocess.run, command[:-2], cwd=REPO, capture_output=True, text=True,
                timeout=TIMEOUT_S * 2,
            )
            assert without.returncode == 2 and "does not verify" in without.stderr
            assert without.stderr.count("\n") == 1, without.stderr

    run(scenario())
