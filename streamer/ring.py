"""A fixed-capacity float32 ring buffer (pure; one owner thread, no locking).

Used per stream by :mod:`streamer.windows` to keep the last ``window_s`` of speech. Memory is
allocated once; appending more than the capacity keeps only the newest samples.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["SampleRing"]


class SampleRing:
    """The newest ``capacity`` float32 samples of a mono signal."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be a positive number of samples, got {capacity}")
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._write = 0  # next write position
        self._size = 0
        self.total_written = 0  # samples appended since creation or the last clear()

    @property
    def capacity(self) -> int:
        """Maximum number of samples held."""
        return self._buf.size

    def __len__(self) -> int:
        return self._size

    def append(self, samples: NDArray[np.float32]) -> None:
        """Append samples; the oldest are overwritten once the ring is full."""
        n = samples.size
        if n == 0:
            return
        cap = self._buf.size
        self.total_written += n
        if n >= cap:
            self._buf[:] = samples[n - cap :]
            self._write = 0
            self._size = cap
            return
        first = min(n, cap - self._write)
        self._buf[self._write : self._write + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        self._write = (self._write + n) % cap
        self._size = min(cap, self._size + n)

    def latest(self, n: int) -> NDArray[np.float32]:
        """A copy of the newest ``n`` samples, oldest first (``n`` <= ``len(self)``)."""
        if not 0 <= n <= self._size:
            raise ValueError(f"asked for {n} samples, the ring holds {self._size}")
        start = (self._write - n) % self._buf.size
        if start + n <= self._buf.size:
            return self._buf[start : start + n].copy()
        return np.concatenate([self._buf[start:], self._buf[: n - (self._buf.size - start)]])

    def clear(self) -> None:
        """Forget all samples (the memory stays allocated)."""
        self._write = 0
        self._size = 0
        self.total_written = 0
