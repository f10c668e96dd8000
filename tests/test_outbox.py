"""The outbox core with plain values: order under out-of-order results, drops, utterance means."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.events import (
    SpeechEnd,
    SpeechStart,
    StreamClosed,
    StreamOpened,
    Utterance,
    WindowLabel,
)
from streamer.outbox import StreamOutbox
from streamer.smoothing import SmoothingConfig
from streamer.windows import SpeechWindow

LABELS = ("Angry", "Happy", "Neutral", "Sad")
ANGRY = np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32)
SAD = np.array([0.1, 0.1, 0.2, 0.6], dtype=np.float32)


def window(start_s: float) -> SpeechWindow:
    return SpeechWindow(start_s, start_s + 2.0, np.zeros(32000, dtype=np.float32))


def outbox() -> StreamOutbox:
    return StreamOutbox("call", LABELS, SmoothingConfig(alpha=1.0, switch_margin=0.0))


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_events_wait_for_earlier_windows_and_results_may_arrive_out_of_order() -> None:
    """Slots leave in submit order: a later window's result waits for the earlier one."""
    box = outbox()
    box.put(StreamOpened("call", 16000, 1.0))
    box.put(SpeechStart("call", 0.5, 1.0))
    assert kinds(box.release(wall_time=1.0)) == ["StreamOpened", "SpeechStart"]
    first, second = box.reserve(window(0.5)), box.reserve(window(1.0))
    box.put(SpeechEnd("call", 0.5, 3.2, 2.0))
    box.fill(second, SAD)
    assert box.release(wall_time=2.0) == []  # the first window is still out
    assert len(box) == 3
    box.fill(first, ANGRY)
    events = box.release(wall_time=3.0)
    assert kinds(events) == ["WindowLabel", "WindowLabel", "SpeechEnd", "Utterance"]
    labels = [e for e in events if isinstance(e, WindowLabel)]
    assert [(w.seq, w.label, w.start_s) for w in labels] == [(0, "Angry", 0.5), (1, "Sad", 1.0)]
    assert all(w.wall_time == 3.0 for w in labels)
    assert labels[1].smoothed_label == "Sad"  # alpha 1: the smoother saw Angry, then Sad
    assert len(box) == 0 and box.labelled == 2


def test_a_dropped_window_takes_no_seq_and_is_counted() -> None:
    """A dropped slot is skipped: the next label gets the next seq; totals reach StreamClosed."""
    box = outbox()
    tickets = [box.reserve(window(t)) for t in (0.0, 0.5, 1.0)]
    box.put(StreamClosed("call", 5.0, 9.0))
    box.fill(tickets[2], ANGRY)
    box.drop(tickets[1])
    box.fill(tickets[0], SAD)
    events = box.release(wall_time=9.0)
    assert kinds(events) == ["WindowLabel", "WindowLabel", "StreamClosed"]
    assert [(e.seq, e.start_s) for e in events if isinstance(e, WindowLabel)] == [
        (0, 0.0), (1, 1.0)]
    closed = events[-1]
    assert isinstance(closed, StreamClosed)
    assert (closed.windows, closed.windows_dropped) == (2, 1)
    assert (box.labelled, box.dropped) == (2, 1)


def test_utterance_is_the_mean_of_the_segments_labelled_windows() -> None:
    """Right after SpeechEnd: the mean of that segment's labels, its drops counted; per segment."""
    box = outbox()
    box.put(SpeechStart("call", 0.0, 1.0))
    a, b, c = (box.reserve(window(t)) for t in (0.0, 0.5, 1.0))
    box.put(SpeechEnd("call", 0.0, 3.0, 1.0))
    box.fill(a, ANGRY)
    box.fill(b, SAD)
    box.drop(c)
    box.put(SpeechStart("call", 5.0, 2.0))
    d = box.reserve(window(5.0))
    box.put(SpeechEnd("call", 5.0, 7.0, 2.0))
    box.fill(d, SAD)
    events = box.release(wall_time=4.0)
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) == 2
    first, second = utterances
    mean = (ANGRY.astype(np.float64) + SAD) / 2
    assert first.probabilities == pytest.approx(tuple(mean))
    assert (first.label, first.confidence) == ("Angry", pytest.approx(0.4))
    assert (first.start_s, first.end_s, first.wall_time) == (0.0, 3.0, 4.0)
    assert (first.windows, first.windows_dropped) == (2, 1)
    assert second.probabilities == pytest.approx(tuple(SAD))  # the sum restarted
    assert (second.label, second.windows, second.windows_dropped) == ("Sad", 1, 0)
    assert isinstance(events[events.index(first) - 1], SpeechEnd)


def test_a_segment_with_every_window_dropped_has_no_utterance() -> None:
    """No labelled window in the segment: SpeechEnd comes alone."""
    box = outbox()
    box.drop(box.reserve(window(0.0)))
    box.put(SpeechEnd("call", 0.0, 2.5, 1.0))
    assert kinds(box.release(wall_time=1.0)) == ["SpeechEnd"]


def test_a_long_gap_resets_the_smoother_through_the_speech_events() -> None:
    """SpeechEnd/SpeechStart reach the smoother: after a long gap the new segment stands alone."""
    box = StreamOutbox("call", LABELS, SmoothingConfig(alpha=0.4, gap_reset_s=0.25))
    box.put(SpeechStart("call", 0.0, 1.0))
    for t in (0.0, 0.5, 1.0):
        box.fill(box.reserve(window(t)), ANGRY)
    box.put(SpeechEnd("call", 0.0, 3.0, 1.0))
    box.put(SpeechStart("call", 4.0, 1.0))
    box.fill(box.reserve(window(4.0)), SAD)
    last = box.release(wall_time=1.0)[-1]
    assert isinstance(last, WindowLabel)
    assert (last.label, last.smoothed_label) == ("Sad", "Sad")


def test_tickets_settle_once() -> None:
    """A ticket is pending until filled or dropped; settling it again, or an unknown one, fails."""
    box = outbox()
    ticket = box.reserve(window(0.0))
    assert box.is_pending(ticket) and not box.is_pending(ticket + 1)
    box.fill(ticket, ANGRY)
    assert not box.is_pending(ticket)
    with pytest.raises(ValueError, match="not waiting"):
        box.drop(ticket)
    box.release(wall_time=0.0)
    with pytest.raises(ValueError, match="not waiting"):
        box.fill(ticket, ANGRY)  # released already
    later = box.reserve(window(0.5))
    assert later == ticket + 1 and box.is_pending(later)
    with pytest.raises(ValueError, match="4 probabilities"):
        box.fill(later, np.array([0.5, 0.5], dtype=np.float32))
