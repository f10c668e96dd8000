"""Push an audio file to a server's ``WS /ingest`` as a live call would arrive (caller's loop).

Usage::

    result = await push_file("call.wav", stream="call-42", roles=("agent", "customer"))

The file is read frame by frame (bounded memory) at its own rate and channel count: the rates
and channels ``/ingest`` takes (:mod:`streamer.protocol.limits`: 8000 to 48000 Hz, 1 or 2
channels) pass through unchanged, so a stereo call keeps one stream per channel on the
server; anything else is refused here with a ClientError (resample or split it
first: the client does no signal processing). Frames of ``frame_ms`` are sent paced in real time
(frame *i* leaves when its last sample would have been captured live, on a monotonic clock, so
the pace never drifts), or with ``fast=True`` as fast as the server reads them (websockets'
write buffer gives the backpressure).

The server's ``error`` frame (any time) or a close other than 1000 becomes a ClientError that
names the server's code and message. ``token`` (an ingest token) goes in the handshake's
``Authorization: Bearer`` header; ``wss://`` URLs verify the server against ``ca_file`` or the
system CAs (see :mod:`client.auth`). Imports the protocol home, websockets, numpy and soundfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from client.api import open_connection
from client.auth import auth_headers, ssl_context
from client.errors import ClientError
from streamer.protocol.limits import (
    DEFAULT_INGEST_URL,
    INGEST_BYTES_PER_SAMPLE,
    INGEST_FORMATS,
    MAX_INGEST_CHANNELS,
    MAX_INGEST_RATE_HZ,
    MIN_INGEST_RATE_HZ,
)
from streamer.protocol.messages import (
    ErrorMessage,
    IngestAck,
    IngestEnd,
    IngestStart,
    MessageError,
    decode,
    encode,
)
from streamer.protocol.urls import UrlError
from streamer.protocol.urls import ingest_url as _ingest_url

__all__ = [
    "PushConfig",
    "PushResult",
    "ingest_url",
    "pcm_frames",
    "send_file",
    "push_file",
]

logger = logging.getLogger(__name__)

#: wire sample format -> the numpy sample type soundfile reads it as (sizes: the limits')
_SAMPLE_TYPES = {"s16le": "int16", "f32le": "float32"}


@dataclass(frozen=True, slots=True)
class PushConfig:
    """Where and how ``push`` sends (``emotion-monitor push`` flags map one to one).

    ``url`` is normalised (see :func:`ingest_url`); bad values raise ClientError.
    """

    stream: str
    url: str = DEFAULT_INGEST_URL
    roles: tuple[str, ...] = ()
    fast: bool = False
    format: str = "s16le"
    frame_ms: int = 20
    metadata: Mapping[str, str] = field(default_factory=dict)
    open_timeout_s: float = 10.0
    token: str | None = field(default=None, repr=False)
    ca_file: str | Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", ingest_url(self.url))
        auth_headers(self.token)  # checks it
        ssl_context(self.url, self.ca_file)  # checks the CA file against the URL
        object.__setattr__(self, "roles", tuple(self.roles))
        object.__setattr__(self, "metadata", dict(self.metadata))
        if not isinstance(self.stream, str) or not self.stream:
            raise ClientError(f"stream id must be a non-empty string, got {self.stream!r}")
        if self.format not in INGEST_FORMATS:
            raise ClientError(
                f"format {self.format!r} not allowed: use {', '.join(INGEST_FORMATS)}"
            )
        if not 5 <= self.frame_ms <= 1000:
            raise ClientError(f"frame_ms must be 5..1000, got {self.frame_ms}")
        if not 0 < self.open_timeout_s <= 600:
            raise ClientError(f"open_timeout_s must be in (0, 600], got {self.open_timeout_s}")


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one push did."""

    stream: str
    streams: tuple[str, ...]  # the server's per-channel stream ids
    seconds: float  # audio sent
    frames_sent: int
    wall_s: float


def ingest_url(url: str) -> str:
    """Check an ingest URL (ws/wss, or http(s) made ws(s)); no path means ``/ingest``."""
    try:
        return _ingest_url(url)
    except UrlError as exc:
        raise ClientError(str(exc)) from exc


def pcm_frames(
    blocks: Iterator[np.ndarray], fmt: str
) -> Iterator[bytes]:
    """(frames, channels) blocks of int16 or float32 -> interleaved little-endian bytes (pure)."""
    dtype = np.dtype(_SAMPLE_TYPES[fmt]).newbyteorder("<")
    for block in blocks:
        yield np.ascontiguousarray(block, dtype=dtype).tobytes()


def _open_file(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise ClientError(f"{path}: no such audio file")
    try:
        audio = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise ClientError(f"{path}: cannot read audio ({exc})") from exc
    try:
        if audio.frames <= 0:
            raise ClientError(f"{path}: the file holds no audio samples")
        if not MIN_INGEST_RATE_HZ <= audio.samplerate <= MAX_INGEST_RATE_HZ:
            raise ClientError(
                f"{path}: sample rate {audio.samplerate} Hz not accepted by /ingest (allowed "
                f"{MIN_INGEST_RATE_HZ}..{MAX_INGEST_RATE_HZ} Hz); resample the file first"
            )
        if not 1 <= audio.channels <= MAX_INGEST_CHANNELS:
            raise ClientError(
                f"{path}: {audio.channels} channels; /ingest takes 1..{MAX_INGEST_CHANNELS} "
                "(split the file first)"
            )
    except ClientError:
        audio.close()
        raise
    return audio


async def push_file(
    path: str | Path,
    url: str = DEFAULT_INGEST_URL,
    *,
    stream: str,
    roles: Sequence[str] = (),
    fast: bool = False,
    fmt: str = "s16le",
    frame_ms: int = 20,
    metadata: Mapping[str, str] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    ca_file: str | Path | None = None,
) -> PushResult:
    """Send ``path`` to ``url`` as stream ``stream`` (keyword form of :func:`send_file`)."""
    return await send_file(path, PushConfig(
        stream=stream, url=url, roles=tuple(roles), fast=fast, format=fmt, frame_ms=frame_ms,
        metadata=dict(metadata or {}), open_timeout_s=open_timeout_s, token=token,
        ca_file=ca_file,
    ))


async def send_file(path: str | Path, config: PushConfig) -> PushResult:
    """Send the file at ``path`` as configured; see the module docstring."""
    path = Path(path)
    with _open_file(path) as audio:
        rate, channels = int(audio.samplerate), int(audio.channels)
        if config.roles and len(config.roles) != channels:
            raise ClientError(
                f"{len(config.roles)} role(s) {list(config.roles)} for a {channels}-channel "
                "file: give one per channel"
            )
        start = IngestStart(
            stream=config.stream, sample_rate_hz=rate, channels=channels, format=config.format,
            roles=config.roles, metadata=dict(config.metadata),
        )
        per_frame = max(1, rate * config.frame_ms // 1000)
        blocks = audio.blocks(blocksize=per_frame, dtype=_SAMPLE_TYPES[config.format],
                              always_2d=True)
        try:
            connection = await open_connection(
                config.url, headers=auth_headers(config.token),
                tls=ssl_context(config.url, config.ca_file),
                open_timeout_s=config.open_timeout_s, max_frame_bytes=1 << 20,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ClientError(f"cannot connect to {config.url}: {exc}") from exc
        async with connection:
            return await _push(
                connection, start, pcm_frames(blocks, config.format), config.fast
            )


def _rejected(error: ErrorMessage, stream: str) -> ClientError:
    return ClientError(f"server rejected stream {stream!r}: {error.code}: {error.message}")


async def _push(
    connection: ClientConnection,
    start: IngestStart,
    frames: Iterator[bytes],
    fast: bool,
) -> PushResult:
    began = time.monotonic()
    await connection.send(encode(start))
    try:
        reply = decode(await connection.recv())
    except ConnectionClosed as exc:
        raise ClientError(f"server closed the connection before acknowledging: {exc}") from exc
    except MessageError as exc:
        raise ClientError(f"server sent a bad reply: {exc}") from exc
    if isinstance(reply, ErrorMessage):
        raise _rejected(reply, start.stream)
    if not isinstance(reply, IngestAck):
        raise ClientError(f"server replied {reply.TYPE!r} instead of ingest_ack")
    errors: list[ErrorMessage] = []
    reader = asyncio.create_task(_read_errors(connection, errors), name="push-reader")
    sent = samples = 0
    frame_bytes = start.channels * INGEST_BYTES_PER_SAMPLE[start.format]
    clock = time.monotonic()
    try:
        for payload in frames:
            if reader.done():
                break
            samples += len(payload) // frame_bytes
            if not fast:
                delay = clock + samples / start.sample_rate_hz - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await connection.send(payload)
            sent += 1
        if not reader.done():
            await connection.send(encode(IngestEnd()))
        await reader  # the server closes after flushing the streams
    except ConnectionClosed:
        pass
    finally:
        if not reader.done():
            reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    if errors:
        raise _rejected(errors[0], start.stream)
    if connection.close_code != 1000:
        why = f"{connection.close_code} {connection.close_reason or ''}".strip()
        raise ClientError(f"stream {start.stream!r}: connection closed abnormally ({why})")
    seconds = samples / start.sample_rate_hz
    return PushResult(start.stream, reply.streams, seconds, sent, time.monotonic() - began)


async def _read_errors(connection: ClientConnection, errors: list[ErrorMessage]) -> None:
    """Read the server's frames until it closes; keep its error messages."""
    with contextlib.suppress(ConnectionClosed):
        async for frame in connection:
            try:
                message = decode(frame)
            except MessageError:
                logger.warning("server sent a bad frame; ignored")
                continue
            if isinstance(message, ErrorMessage):
                errors.append(message)
