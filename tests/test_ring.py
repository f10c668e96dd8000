"""Fixed-capacity ring buffer: wrap-around, overfill, latest(), clear()."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.ring import SampleRing


def ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)


def test_keeps_the_newest_samples_across_wraps() -> None:
    """After many uneven appends the ring holds exactly the newest capacity samples."""
    ring = SampleRing(10)
    written = 0
    for n in (3, 4, 5, 1, 9, 7):
        ring.append(ramp(written, n))
        written += n
        held = min(written, 10)
        assert len(ring) == held
        np.testing.assert_array_equal(ring.latest(held), ramp(written - held, held))
    assert ring.total_written == written


def test_append_larger_than_capacity() -> None:
    """One append longer than the capacity keeps its tail."""
    ring = SampleRing(4)
    ring.append(ramp(0, 11))
    np.testing.assert_array_equal(ring.latest(4), ramp(7, 4))
    np.testing.assert_array_equal(ring.latest(2), ramp(9, 2))


def test_latest_returns_a_copy() -> None:
    """Changing a returned window does not change the ring."""
    ring = SampleRing(5)
    ring.append(ramp(0, 5))
    out = ring.latest(5)
    out[:] = -1
    np.testing.assert_array_equal(ring.latest(5), ramp(0, 5))


def test_clear_and_bounds() -> None:
    """clear() empties the ring; asking for more than it holds is an error."""
    ring = SampleRing(5)
    ring.append(ramp(0, 3))
    with pytest.raises(ValueError, match="holds 3"):
        ring.latest(4)
    ring.clear()
    assert len(ring) == 0 and ring.total_written == 0
    with pytest.raises(ValueError, match="positive"):
        SampleRing(0)
