"""Microphone capture with sounddevice, and input-device listing.

Threads: PortAudio's audio thread runs :meth:`CaptureBuffer.callback` (copy the block, note the
status flags, hand off; nothing else). Consumers read blocks on their own thread with
:meth:`CaptureBuffer.read` or in an asyncio loop with ``async for``. ``sounddevice`` is imported
only when a function here needs PortAudio, so importing this module touches no device.

Hand-off rule: a bounded queue of ``queue_blocks`` blocks; when full the oldest block is dropped
and counted in ``blocks_dropped`` (low latency beats completeness). Driver-reported input
overflows are counted in ``input_overflows``. Pass the :class:`MicrophoneSource` to
``Engine.open_stream(..., capture=source)`` to have both counters in ``Engine.stats()``.
Settings are one :class:`CaptureConfig`, checked when made; the device itself is checked when
the :class:`MicrophoneSource` is made.

A device that stops delivering audio (unplugged, server gone) surfaces as an :class:`AudioError`
from ``read``/``async for`` -- either because PortAudio finished the stream on its own or because
no block arrived for ``stall_timeout_s`` (``start_timeout_s`` before the first block: a fresh
PulseAudio server took about 1.8 s to deliver its first block here) -- never as a hang.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import downmix
from streamer.errors import AudioError
from streamer.protocol.limits import MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ

__all__ = [
    "CaptureBuffer",
    "CaptureConfig",
    "InputDevice",
    "MicrophoneSource",
    "list_input_devices",
    "resolve_input_device",
]

logger = logging.getLogger(__name__)

_NO_DEVICE = "no input device found: use --source FILE to analyse an audio file instead"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """Settings of one microphone capture (``run --device`` sets ``device``).

    - ``device``: index or (part of) a name; None = the system default input.
    - ``sample_rate_hz``: capture rate; None = the device's default (the engine resamples).
    - ``channels``: channels captured (downmixed to mono on the consumer's side).
    - ``block_s``: audio per callback block.
    - ``queue_blocks``: blocks the hand-off holds; when full the oldest is dropped (counted).
    - ``stall_timeout_s`` / ``start_timeout_s``: silence from the device, after / before the
      first block, that counts as a lost device.
    - ``name``: the stream id.
    """

    device: int | str | None = None
    sample_rate_hz: int | None = None
    channels: int = 1
    block_s: float = 0.05
    queue_blocks: int = 64
    stall_timeout_s: float = 2.0
    start_timeout_s: float = 10.0
    name: str = "mic"

    def __post_init__(self) -> None:
        if not 0.005 <= self.block_s <= 1.0:
            raise ValueError(f"block_s must be between 0.005 and 1.0 s, got {self.block_s!r}")
        if self.sample_rate_hz is not None and not (
            MIN_INPUT_RATE_HZ <= self.sample_rate_hz <= MAX_INPUT_RATE_HZ
        ):
            raise AudioError(
                f"unsupported sample rate {self.sample_rate_hz} Hz: allowed "
                f"{MIN_INPUT_RATE_HZ}..{MAX_INPUT_RATE_HZ} Hz"
            )
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or (
            self.channels < 1
        ):
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        if not 1 <= self.queue_blocks <= 10_000:
            raise ValueError(f"queue_blocks must be 1..10000, got {self.queue_blocks!r}")
        if not self.stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {self.stall_timeout_s!r}")
        if not self.start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")


@dataclass(frozen=True, slots=True)
class InputDevice:
    """One audio input device as PortAudio lists it."""

    index: int
    name: str
    channels: int
    default_rate_hz: int
    is_default: bool
    hostapi: str = ""


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except OSError as exc:  # PortAudio shared library missing
        raise AudioError(
            f"cannot use audio devices ({exc}); install PortAudio (libportaudio2) "
            "or use --source FILE"
        ) from exc
    return sounddevice


def _input_devices(
    devices: Sequence[Mapping[str, Any]], default_index: int, hostapis: Sequence[str] = ()
) -> list[InputDevice]:
    found = []
    for index, dev in enumerate(devices):
        channels = int(dev.get("max_input_channels", 0))
        if channels <= 0:
            continue
        api = int(dev.get("hostapi", -1))
        found.append(
            InputDevice(
                index=index,
                name=str(dev.get("name", f"device {index}")),
                channels=channels,
                default_rate_hz=int(round(float(dev.get("default_samplerate", 0.0)))),
                is_default=index == default_index,
                hostapi=hostapis[api] if 0 <= api < len(hostapis) else "",
            )
        )
    return found


def list_input_devices() -> list[InputDevice]:
    """Input devices PortAudio sees (empty when there are none)."""
    sd = _sounddevice()
    try:
        devices = list(sd.query_devices())
        hostapis = [str(api.get("name", "")) for api in sd.query_hostapis()]
    except sd.PortAudioError as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from exc
    default = sd.default.device[0]
    return _input_devices(devices, int(default) if default is not None else -1, hostapis)


def resolve_input_device(device: int | str | None, inputs: Sequence[InputDevice]) -> InputDevice:
    """Pick an input by index, by (part of) its name, or the default; AudioError otherwise.

    A string of digits is an index. A name matches case-insensitively as a substring; an exact
    name wins over partial matches; several partial matches are ambiguous.
    """
    if not inputs:
        raise AudioError(_NO_DEVICE)
    listing = "; ".join(f"{d.index}: {d.name}" for d in inputs)
    if device is None:
        for dev in inputs:
            if dev.is_default:
                return dev
        return inputs[0]
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if isinstance(device, int) and not isinstance(device, bool):
        for dev in inputs:
            if dev.index == device:
                return dev
        raise AudioError(f"input device {device} not found; input devices are: {listing}")
    if not isinstance(device, str) or not device.strip():
        raise AudioError(f"device must be an index or part of a name, got {device!r}")
    wanted = device.strip().lower()
    exact = [d for d in inputs if d.name.lower() == wanted]
    if len(exact) == 1:
        return exact[0]
    partial = [d for d in inputs if wanted in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise AudioError(f"no input device matches {device!r}; input devices are: {listing}")
    names = "; ".join(f"{d.index}: {d.name}" for d in partial)
    raise AudioError(f"input device {device!r} is ambiguous: it matches {names}; use the index")


class CaptureBuffer:
    """The bounded hand-off between the audio callback and one consumer.

    ``callback`` runs on the audio thread; ``read`` / ``async for`` on the consumer's side yield
    mono float32 blocks (downmixed there, not in the callback).
    """

    def __init__(
        self,
        *,
        channels: int = 1,
        queue_blocks: int = 64,
        stall_timeout_s: float = 2.0,
        start_timeout_s: float = 10.0,
    ) -> None:
        if not 1 <= queue_blocks <= 10_000:
            raise ValueError(f"queue_blocks must be 1..10000, got {queue_blocks!r}")
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s!r}")
        if not start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s!r}")
        self.channels = channels
        self.stall_timeout_s = stall_timeout_s
        self.start_timeout_s = start_timeout_s
        self._blocks: deque[NDArray[np.float32]] = deque()
        self._max = queue_blocks
        self._lock = threading.Lock()  # held only for a deque operation and a counter
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_ready: asyncio.Event | None = None
        self._error: AudioError | None = None
        self._ended = False
        self.blocks_dropped = 0
        self.input_overflows = 0
        self.blocks_received = 0

    def callback(self, indata: NDArray[np.float32], frames: int, time: Any, status: Any) -> None:
        """sounddevice InputStream callback: copy, count flags, hand off (drop-oldest)."""
        block = indata.copy()  # the driver reuses its buffer
        with self._lock:
            if status and status.input_overflow:
                self.input_overflows += 1
            if len(self._blocks) >= self._max:
                self._blocks.popleft()
                self.blocks_dropped += 1
            self._blocks.append(block)
            self.blocks_received += 1
        self._wake()

    def fail(self, error: AudioError) -> None:
        """The device is gone: consumers get ``error`` after the blocks already queued."""
        with self._lock:
            if self._error is None and not self._ended:
                self._error = error
        self._wake()

    def end(self) -> None:
        """Normal stop: consumers finish after the blocks already queued."""
        with self._lock:
            self._ended = True
        self._wake()

    def read(self, timeout: float | None = None) -> NDArray[np.float32] | None:
        """Next mono block; None at the end; AudioError if the device failed or stalled.

        Waits at most ``timeout`` (default: ``start_timeout_s`` before the first block, as an
        audio server may take a couple of seconds to start delivering, then ``stall_timeout_s``)
        before deciding the device stalled.
        """
        while True:
            self._ready.clear()
            outcome = self._next()
            if outcome is not _EMPTY:
                return outcome  # type: ignore[return-value]
            limit = self._wait_limit() if timeout is None else timeout
            if not self._ready.wait(limit):
                raise AudioError(f"no audio from the input device for {limit:.1f} s (lost?)")

    def __aiter__(self) -> AsyncIterator[NDArray[np.float32]]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[NDArray[np.float32]]:
        self._async_ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                self._async_ready.clear()
                outcome = self._next()
                if outcome is None:
                    return
                if outcome is not _EMPTY:
                    yield outcome  # type: ignore[misc]
                    continue
                limit = self._wait_limit()
                try:
                    await asyncio.wait_for(self._async_ready.wait(), limit)
                except asyncio.TimeoutError:
                    raise AudioError(
                        f"no audio from the input device for {limit:.1f} s (lost?)"
                    ) from None
        finally:
            self._loop = None

    def _wait_limit(self) -> float:
        return self.stall_timeout_s if self.blocks_received else self.start_timeout_s

    def _next(self) -> NDArray[np.float32] | None | object:
        """A mono block, None at the end, _EMPTY when nothing is queued; raises on failure."""
        with self._lock:
            block = self._blocks.popleft() if self._blocks else None
            error, ended = self._error, self._ended
        if block is not None:
            return downmix(block)
        if error is not None:
            raise error
        if ended:
            return None
        return _EMPTY

    def _wake(self) -> None:
        self._ready.set()
        loop, event = self._loop, self._async_ready
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed meanwhile; nobody is waiting there
                pass


_EMPTY = object()


class MicrophoneSource:
    """One input device as a stream of mono float32 blocks at its own rate.

    The device of ``config`` is resolved (and its settings checked) on construction; audio
    flows between ``start()`` (or ``with``) and ``close()``. ``close()`` is idempotent.
    ``name`` ("mic") is the stream id; ``sample_rate_hz`` the capture rate (the engine
    resamples to 16 kHz).
    """

    def __init__(self, config: CaptureConfig | None = None) -> None:
        config = CaptureConfig() if config is None else config
        self.config = config
        self._sd = _sounddevice()
        self.device = resolve_input_device(config.device, list_input_devices())
        channels = config.channels
        if channels > self.device.channels:
            raise AudioError(
                f"channels {channels} not available on {self.device.name!r}: "
                f"allowed 1..{self.device.channels}"
            )
        rate = self.device.default_rate_hz if config.sample_rate_hz is None else (
            config.sample_rate_hz
        )
        if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
            raise AudioError(
                f"unsupported sample rate {rate} Hz: allowed "
                f"{MIN_INPUT_RATE_HZ}..{MAX_INPUT_RATE_HZ} Hz"
            )
        try:
            self._sd.check_input_settings(
                device=self.device.index, channels=channels, dtype="float32", samplerate=rate
            )
        except (self._sd.PortAudioError, ValueError) as exc:
            raise AudioError(
                f"input device {self.device.name!r} cannot capture {channels} channel(s) at "
                f"{rate} Hz ({exc}); its default rate is {self.device.default_rate_hz} Hz"
            ) from exc
        self.name = config.name
        self.sample_rate_hz = int(rate)
        self.channels = channels
        self.block_s = config.block_s
        self.buffer = CaptureBuffer(
            channels=channels,
            queue_blocks=config.queue_blocks,
            stall_timeout_s=config.stall_timeout_s,
            start_timeout_s=config.start_timeout_s,
        )
        self._stream: Any = None
        self._closing = False
        self._closed = False

    @property
    def blocks_dropped(self) -> int:
        """Blocks dropped because the consumer fell behind (drop-oldest)."""
        return self.buffer.blocks_dropped

    @property
    def input_overflows(self) -> int:
        """Callbacks whose status reported an input overflow."""
        return self.buffer.input_overflows

    def start(self) -> None:
        """Open and start the input stream (once)."""
        if self._stream is not None or self._closed:
            return
        sd = self._sd
        try:
            stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.sample_rate_hz,
                channels=self.channels,
                dtype="float32",
                blocksize=max(1, round(self.block_s * self.sample_rate_hz)),
                callback=self.buffer.callback,
                finished_callback=self._finished,
            )
            stream.start()
        except sd.PortAudioError as exc:
            raise AudioError(f"cannot open input device {self.device.name!r}: {exc}") from exc
        self._stream = stream
        logger.info(
            "capturing from %s (%s) at %s Hz, %s channel(s)",
            self.device.index, self.device.name, self.sample_rate_hz, self.channels,
        )

    def close(self) -> None:
        """Stop and close the stream; pending readers finish. Safe to call twice."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except self._sd.PortAudioError as exc:
                logger.warning("closing input device %s: %s", self.device.name, exc)
        self.buffer.end()
        if self.blocks_dropped or self.input_overflows:
            logger.warning(
                "capture: %s block(s) dropped, %s input overflow(s)",
                self.blocks_dropped, self.input_overflows,
            )

    def __enter__(self) -> MicrophoneSource:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, timeout: float | None = None) -> NDArray[np.float32] | None:
        """Next mono block (see :meth:`CaptureBuffer.read`)."""
        return self.buffer.read(timeout)

    def __aiter__(self) -> AsyncIterator[NDArray[np.float32]]:
        return self.buffer.__aiter__()

    def _finished(self) -> None:
        # PortAudio thread: the stream stopped. Expected after close(); otherwise the device
        # went away.
        if not self._closing:
            self.buffer.fail(AudioError(f"input device {self.device.name!r} stopped delivering "
                                        "audio (disconnected?)"))
