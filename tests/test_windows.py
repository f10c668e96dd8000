"""Windowing: a window every hop of new speech, exact stream times, flush of short utterances."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamer.errors import AudioError
from streamer.windows import Windower

RATE = 16000


def make(**overrides: float) -> Windower:
    params: dict[str, Any] = {"window_s": 2.0, "hop_s": 0.5, "min_window_s": 0.5} | overrides
    return Windower(**params)


def stream_ramp(start_s: float, seconds: float) -> np.ndarray:
    """Samples whose value is their own stream sample index (to check window contents)."""
    start = round(start_s * RATE)
    return np.arange(start, start + round(seconds * RATE), dtype=np.float32)


def feed(w: Windower, start_s: float, seconds: float, block_s: float = 0.03) -> list:
    audio = stream_ramp(start_s, seconds)
    block = round(block_s * RATE)
    out = []
    for i in range(0, audio.size, block):
        out += w.push(start_s + i / RATE, audio[i : i + block])
    return out


def test_first_window_at_window_s_then_every_hop() -> None:
    """3.6 s of speech from 1.0 s: windows end at 3.0, 3.5, 4.0, 4.5, each 2 s long."""
    windows = feed(make(), 1.0, 3.6)
    assert [w.end_s for w in windows] == pytest.approx([3.0, 3.5, 4.0, 4.5])
    for w in windows:
        assert w.end_s - w.start_s == pytest.approx(2.0)
        assert w.samples.size == 2 * RATE
        assert w.samples[0] == round(w.start_s * RATE)  # content is exactly that stream span
        assert not w.final


def test_large_push_yields_every_due_window() -> None:
    """Pushing 3.6 s at once gives the same windows as pushing frame by frame."""
    one = feed(make(), 1.0, 3.6, block_s=3.6)
    many = feed(make(), 1.0, 3.6)
    assert [(w.start_s, w.end_s) for w in one] == [(w.start_s, w.end_s) for w in many]


def test_segment_end_flushes_the_unclassified_tail() -> None:
    """A tail of >= min_window_s new speech after the last window is classified at segment end."""
    w = make()
    windows = feed(w, 0.0, 3.3)  # windows end at 2.0, 2.5, 3.0; 0.3 s new after
    assert [x.end_s for x in windows] == pytest.approx([2.0, 2.5, 3.0])
    assert w.end_segment() == []  # 0.3 s < min_window_s
    windows = feed(w, 10.0, 3.6)  # new segment: windows end at 12.0 .. 13.5, 0.1 s new
    assert windows[0].start_s == pytest.approx(10.0)
    assert w.end_segment() == []
    feed(w, 20.0, 2.7)  # window ends 22.0, 22.5; 0.2 s new
    assert w.end_segment() == []
    w2 = make(hop_s=1.0)
    feed(w2, 0.0, 2.8)  # window ends at 2.0; 0.8 s new
    (tail,) = w2.end_segment()
    assert tail.final
    assert (tail.start_s, tail.end_s) == pytest.approx((0.8, 2.8))


def test_short_utterance_gets_one_window() -> None:
    """A 0.7 s segment yields one 0.7 s window at its end; a 0.4 s one yields none."""
    w = make()
    assert feed(w, 5.0, 0.7) == []
    (only,) = w.end_segment()
    assert (only.start_s, only.end_s) == pytest.approx((5.0, 5.7))
    assert only.samples.size == round(0.7 * RATE)
    feed(w, 8.0, 0.4)
    assert w.end_segment() == []


def test_windows_never_span_segments() -> None:
    """After a segment end the next window starts inside the new segment."""
    w = make()
    feed(w, 0.0, 1.5)
    w.end_segment()
    windows = feed(w, 4.0, 2.0)
    assert [(x.start_s, x.end_s) for x in windows] == [(4.0, 6.0)]


def test_gap_inside_a_segment_is_an_error() -> None:
    """Non-contiguous audio within a segment is refused."""
    w = make()
    w.push(0.0, np.zeros(480, dtype=np.float32))
    with pytest.raises(AudioError, match="contiguous"):
        w.push(1.0, np.zeros(480, dtype=np.float32))


@pytest.mark.parametrize(
    "params",
    [{"hop_s": 3.0}, {"hop_s": 0.0}, {"min_window_s": 2.5}, {"min_window_s": 0.0}],
)
def test_bad_parameters(params: dict[str, float]) -> None:
    """Inconsistent window/hop/min settings raise ValueError."""
    with pytest.raises(ValueError):
        make(**params)
