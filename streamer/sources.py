"""Audio files as a stream of blocks (runs on the consumer's thread or asyncio loop).

A :class:`FileSource` reads anything soundfile reads, at the file's own rate, and yields mono
float32 blocks (the mean of the channels, or one chosen channel); the engine's feed resamples.
With ``realtime=True`` a block is released no earlier than the moment its last sample would
have been captured live (``start + frames_through_its_end / rate`` on a monotonic clock read
when iteration starts), so the pace never drifts however long the file;
with ``realtime=False`` blocks come as fast as the consumer takes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from streamer.audio import downmix
from streamer.errors import AudioError
from streamer.protocol.limits import MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ

__all__ = ["FileSource"]

logger = logging.getLogger(__name__)

_READ_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError)


class FileSource:
    """One audio file as mono float32 blocks of ``block_s`` at its native rate.

    Raises AudioError on construction for a missing, unreadable or empty file, a rate outside
    8000-192000 Hz, or a ``channel`` the file does not have. ``name`` (the file stem) is the
    stream id. A context manager; ``close()`` is idempotent and ends any iteration.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channel: int | None = None,
        realtime: bool = True,
        block_s: float = 0.1,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        if not 0.005 <= block_s <= 10.0:
            raise ValueError(f"block_s must be between 0.005 and 10 s, got {block_s!r}")
        if not self.path.is_file():
            raise AudioError(f"{self.path}: no such audio file")
        try:
            self._file = sf.SoundFile(str(self.path))
        except _READ_ERRORS as exc:
            raise AudioError(f"{self.path}: cannot read audio ({exc})") from exc
        try:
            self.sample_rate_hz = int(self._file.samplerate)
            self.channels = int(self._file.channels)
            self.frames = int(self._file.frames)
            if self.frames <= 0:
                raise AudioError(f"{self.path}: the file holds no audio samples")
            if not MIN_INPUT_RATE_HZ <= self.sample_rate_hz <= MAX_INPUT_RATE_HZ:
                raise AudioError(
                    f"{self.path}: unsupported sample rate {self.sample_rate_hz} Hz: "
                    f"allowed {MIN_INPUT_RATE_HZ}..{MAX_INPUT_RATE_HZ} Hz"
                )
            if channel is not None and not 0 <= channel < self.channels:
                raise AudioError(
                    f"{self.path}: channel {channel} out of range: the file has "
                    f"{self.channels} channel(s), allowed 0..{self.channels - 1}"
                )
        except AudioError:
            self._file.close()
            raise
        self.channel = channel
        self.realtime = realtime
        self.block_s = block_s
        self.name = name if name is not None else self.path.stem
        self._block_frames = max(1, round(block_s * self.sample_rate_hz))
        self._clock = clock
        self._closed = False

    @property
    def duration_s(self) -> float:
        """Length of the file in seconds."""
        return self.frames / self.sample_rate_hz

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._file.close()

    def blocks(self) -> Iterator[NDArray[np.float32]]:
        """Every block from the start, unpaced (the pacing is done by the iterators)."""
        if self._closed:
            raise AudioError(f"{self.path}: source is closed")
        self._file.seek(0)
        while not self._closed:
            try:
                data = self._file.read(self._block_frames, dtype="float32", always_2d=True)
            except _READ_ERRORS as exc:
                raise AudioError(f"{self.path}: read failed ({exc})") from exc
            if data.shape[0] == 0:
                return
            yield downmix(data, channel=self.channel)

    def due_s(self, frames_through: int) -> float:
        """Seconds after the start when a block ending at frame ``frames_through`` is due."""
        return frames_through / self.sample_rate_hz

    def __iter__(self) -> Iterator[NDArray[np.float32]]:
        """Blocks, paced with ``time.sleep`` when ``realtime``."""
        start = self._clock()
        sent = 0
        for block in self.blocks():
            if self.realtime:
                delay = start + self.due_s(sent + block.size) - self._clock()
                if delay > 0:
                    time.sleep(delay)
            yield block
            sent += block.size

    def __aiter__(self) -> AsyncIterator[NDArray[np.float32]]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[NDArray[np.float32]]:
        start = self._clock()
        sent = 0
        for block in self.blocks():
            if self.realtime:
                delay = start + self.due_s(sent + block.size) - self._clock()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)  # let the loop breathe between blocks
            yield block
            sent += block.size
