"""The scheduler core with plain values: round-robin, each drop rule, stale age, batch grouping."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.scheduler import DropCounts, QueuedWindow, RoundRobinWindowScheduler
from streamer.windows import SpeechWindow

FULL = 32000  # samples in a 2 s window at 16 kHz


def job(stream: str, ticket: int, *, at_s: float = 0.0, samples: int = FULL) -> QueuedWindow[str]:
    window = SpeechWindow(ticket * 0.5, ticket * 0.5 + samples / 16000,
                          np.zeros(samples, dtype=np.float32))
    return QueuedWindow(stream, ticket, window, at_s)


def scheduler(**kwargs: object) -> RoundRobinWindowScheduler[str]:
    settings: dict[str, object] = {
        "queue_windows": 8, "max_batch": 1, "realtime": True, "max_lag_s": 2.0}
    settings.update(kwargs)
    return RoundRobinWindowScheduler(**settings)  # type: ignore[arg-type]


def served(s: RoundRobinWindowScheduler[str], now_s: float = 0.0) -> list[tuple[str, int]]:
    """Take one window at a time until none is left: (stream, ticket) in the order served."""
    order = []
    while s.queued:
        for group in s.take(now_s).groups:
            order += [(j.stream, j.ticket) for j in group]
    return order


def test_round_robin_serves_one_window_per_stream_per_turn() -> None:
    """A stream with a backlog does not starve the others: turns alternate in arrival order."""
    s = scheduler()
    for ticket in range(4):
        s.push(job("a", ticket))
    s.push(job("b", 0))
    s.push(job("b", 1))
    s.push(job("c", 0))
    assert s.queued == 7
    assert served(s) == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    assert s.drops == DropCounts()


def test_a_stream_that_empties_rejoins_the_rotation_at_the_back() -> None:
    """Once its queue ran dry, a stream's next window waits behind streams already queued."""
    s = scheduler()
    s.push(job("a", 0))
    s.push(job("b", 0))
    s.push(job("b", 1))
    assert [(j.stream, j.ticket) for j in s.take(0.0).groups[0]] == [("a", 0)]
    s.push(job("a", 1))
    assert served(s) == [("b", 0), ("a", 1), ("b", 1)]


def test_realtime_full_queue_evicts_the_oldest_and_counts_it() -> None:
    """queue_windows=2, realtime: the third push returns the first window as evicted."""
    s = scheduler(queue_windows=2)
    assert s.push(job("a", 0)) is None
    assert s.push(job("a", 1)) is None
    assert not s.has_room("a") and s.has_room("b")
    evicted = s.push(job("a", 2))
    assert evicted is not None and evicted.ticket == 0
    assert s.queued == 2
    assert s.drops == DropCounts(queue_full=1)
    assert served(s) == [("a", 1), ("a", 2)]


def test_not_realtime_never_evicts_a_push_to_a_full_queue_is_an_error() -> None:
    """realtime=False: has_room tells the caller to wait; pushing anyway raises ValueError."""
    s = scheduler(queue_windows=1, realtime=False)
    s.push(job("a", 0))
    assert not s.has_room("a")
    with pytest.raises(ValueError, match="has_room"):
        s.push(job("a", 1))
    assert s.queued == 1 and s.drops.total == 0


def test_stale_windows_are_set_apart_by_the_given_now() -> None:
    """realtime: a window older than max_lag_s at take(now_s) is stale, counted, not grouped."""
    s = scheduler(max_batch=4, max_lag_s=1.0)
    s.push(job("a", 0, at_s=10.0))
    s.push(job("b", 0, at_s=10.5))
    s.push(job("c", 0, at_s=11.2))
    taken = s.take(11.75)  # ages 1.75, 1.25 and 0.55 s
    assert [(j.stream, j.ticket) for j in taken.stale] == [("a", 0), ("b", 0)]
    assert [[j.stream for j in g] for g in taken.groups] == [["c"]]
    assert len(taken) == 3 and len(taken.windows) == 3
    assert s.drops == DropCounts(stale=2)


def test_a_window_exactly_max_lag_old_still_runs() -> None:
    """The age limit is exclusive: age == max_lag_s is not stale."""
    s = scheduler(max_lag_s=1.0)
    s.push(job("a", 0, at_s=5.0))
    assert s.take(6.0).stale == ()


def test_not_realtime_never_drops_stale_windows() -> None:
    """realtime=False: age does not matter."""
    s = scheduler(realtime=False, max_lag_s=1e-6)
    s.push(job("a", 0, at_s=0.0))
    taken = s.take(1e6)
    assert taken.stale == () and len(taken.groups) == 1
    assert s.drops.total == 0


def test_batches_group_windows_by_length_up_to_max_batch() -> None:
    """max_batch windows per take, round-robin; shorter flush windows get their own group."""
    s = scheduler(max_batch=3)
    s.push(job("a", 0))
    s.push(job("a", 1))
    s.push(job("b", 0, samples=12000))  # a segment's flush window
    s.push(job("c", 0))
    taken = s.take(0.0)
    assert [[(j.stream, j.ticket) for j in g] for g in taken.groups] == [
        [("a", 0), ("c", 0)], [("b", 0)]]
    assert {g[0].window.samples.size for g in taken.groups} == {FULL, 12000}
    assert s.queued == 1
    assert [[(j.stream, j.ticket) for j in g] for g in s.take(0.0).groups] == [[("a", 1)]]
    assert s.take(0.0).groups == ()  # nothing left: an empty take


def test_oldest_submitted_and_clear() -> None:
    """oldest_submitted_s is the earliest waiting window; clear returns and counts the rest."""
    s = scheduler()
    assert s.oldest_submitted_s() is None
    s.push(job("a", 0, at_s=3.0))
    s.push(job("b", 0, at_s=1.0))
    s.push(job("a", 1, at_s=4.0))
    assert s.oldest_submitted_s() == 1.0
    left = s.clear()
    assert [(j.stream, j.ticket) for j in left] == [("a", 0), ("a", 1), ("b", 0)]
    assert s.queued == 0 and s.oldest_submitted_s() is None
    assert s.drops == DropCounts(cleared=3) and s.drops.total == 3


@pytest.mark.parametrize(
    ("field", "value"), [("queue_windows", 0), ("max_batch", 0), ("max_lag_s", 0.0)])
def test_bad_settings(field: str, value: object) -> None:
    """Out-of-range settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        scheduler(**{field: value})
