"""One stream's ordered outbox: events and model results in, events in stream order out (pure).

No threads, locks or clocks: the engine serialises calls with the stream's lock (from the
feeding thread or an inference worker) and passes ``wall_time`` in. The outbox holds one slot
per submitted window or event, in submit order:

- :meth:`StreamOutbox.reserve` takes a slot for a window on its way to the model and returns
  its ticket; :meth:`StreamOutbox.fill` or :meth:`StreamOutbox.drop` settles it when the result
  (or the decision not to run it) arrives, in any order.
- :meth:`StreamOutbox.put` appends an event (StreamOpened, SpeechStart, SpeechEnd,
  StreamClosed) behind every window submitted before it.
- :meth:`StreamOutbox.release` returns the settled prefix as events: a filled window becomes
  a :class:`~streamer.events.WindowLabel` (``seq`` counts labels from 0; dropped windows take
  no number; the smoother sees windows in that order and learns of each SpeechStart/SpeechEnd),
  a dropped one is counted, and each SpeechEnd is followed by its segment's
  :class:`~streamer.events.Utterance` (the mean of its labelled windows' probabilities) when at
  least one of them was labelled. ``StreamClosed`` gets the stream's totals.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from streamer.events import Event, SpeechEnd, SpeechStart, StreamClosed, Utterance, WindowLabel
from streamer.smoothing import Smoother, SmoothingConfig
from streamer.windows import SpeechWindow

__all__ = ["StreamOutbox"]


class _State(enum.Enum):
    EVENT = 1  # holds an event, ready to go
    PENDING = 2  # a window waiting for the model
    DONE = 3  # a window with probabilities
    DROPPED = 4  # a window that will not be labelled


class _Slot:
    __slots__ = ("state", "event", "window", "probs")

    def __init__(
        self, state: _State, *, event: Event | None = None, window: SpeechWindow | None = None
    ) -> None:
        self.state = state
        self.event = event
        self.window = window
        self.probs: NDArray[np.float32] | None = None


class StreamOutbox:
    """Orders one stream's events and labels its windows; see the module docstring."""

    def __init__(
        self, stream_id: str, labels: Sequence[str], smoothing: SmoothingConfig | None = None
    ) -> None:
        self.stream_id = stream_id
        self.labels = tuple(labels)
        self._smoother = Smoother(self.labels, smoothing)
        self._slots: deque[_Slot] = deque()
        self._first_ticket = 0  # ticket of _slots[0]; tickets count every slot ever held
        self._seq = 0  # labels released so far (the next WindowLabel.seq)
        self._dropped = 0  # windows dropped so far
        # the open speech segment: sum of its labelled windows' probabilities, and its drops
        self._segment_sum = np.zeros(len(self.labels), dtype=np.float64)
        self._segment_windows = 0
        self._segment_dropped = 0

    @property
    def labelled(self) -> int:
        """Windows released as labels so far."""
        return self._seq

    @property
    def dropped(self) -> int:
        """Windows released as dropped so far."""
        return self._dropped

    def __len__(self) -> int:
        """Slots held (not yet released)."""
        return len(self._slots)

    def reserve(self, window: SpeechWindow) -> int:
        """Take the next slot for ``window``; returns its ticket for ``fill``/``drop``."""
        self._slots.append(_Slot(_State.PENDING, window=window))
        return self._first_ticket + len(self._slots) - 1

    def put(self, event: Event) -> None:
        """Append ``event``; it is released after every window reserved before it."""
        self._slots.append(_Slot(_State.EVENT, event=event))

    def is_pending(self, ticket: int) -> bool:
        """True while the ticket's window waits for ``fill`` or ``drop``."""
        index = ticket - self._first_ticket
        return 0 <= index < len(self._slots) and self._slots[index].state is _State.PENDING

    def fill(self, ticket: int, probabilities: NDArray[np.float32]) -> None:
        """The model's probabilities (label order) for the ticket's window."""
        if probabilities.shape != (len(self.labels),):
            raise ValueError(
                f"need {len(self.labels)} probabilities, got shape {probabilities.shape}")
        slot = self._pending(ticket)
        slot.probs = probabilities
        slot.state = _State.DONE

    def drop(self, ticket: int) -> None:
        """The ticket's window will not be labelled (counted at release)."""
        self._pending(ticket).state = _State.DROPPED

    def release(self, *, wall_time: float) -> list[Event]:
        """Events for the settled prefix, in stream order (``wall_time`` stamps new ones)."""
        out: list[Event] = []
        while self._slots and self._slots[0].state is not _State.PENDING:
            slot = self._slots.popleft()
            self._first_ticket += 1
            if slot.state is _State.EVENT:
                assert slot.event is not None
                self._release_event(slot.event, wall_time, out)
            elif slot.state is _State.DONE:
                assert slot.window is not None and slot.probs is not None
                out.append(self._label(slot.window, slot.probs, wall_time))
            else:
                self._segment_dropped += 1
                self._dropped += 1
        return out

    def _pending(self, ticket: int) -> _Slot:
        if not self.is_pending(ticket):
            raise ValueError(f"stream {self.stream_id!r}: ticket {ticket} is not waiting")
        return self._slots[ticket - self._first_ticket]

    def _release_event(self, event: Event, wall_time: float, out: list[Event]) -> None:
        if isinstance(event, StreamClosed):
            event = dataclasses.replace(event, windows=self._seq, windows_dropped=self._dropped)
        out.append(event)
        if isinstance(event, SpeechStart):
            self._smoother.speech_start(event.start_s)  # reset/decay over the gap
        elif isinstance(event, SpeechEnd):
            self._smoother.speech_end(event.end_s)
            utterance = self._utterance(event, wall_time)
            if utterance is not None:
                out.append(utterance)

    def _label(
        self, window: SpeechWindow, probs: NDArray[np.float32], wall_time: float
    ) -> WindowLabel:
        self._segment_sum += probs
        self._segment_windows += 1
        row = probs.tolist()  # plain floats: the same values, fewer numpy calls
        smoothed = self._smoother.update(row)
        top = max(range(len(row)), key=row.__getitem__)  # the first largest, as np.argmax
        label = WindowLabel(
            stream=self.stream_id,
            seq=self._seq,
            start_s=window.start_s,
            end_s=window.end_s,
            wall_time=wall_time,
            probabilities=tuple(row),
            label=self.labels[top],
            confidence=row[top],
            smoothed_label=smoothed.label,
            smoothed_confidence=smoothed.confidence,
            smoothed_probabilities=smoothed.probabilities,
        )
        self._seq += 1
        return label

    def _utterance(self, end: SpeechEnd, wall_time: float) -> Utterance | None:
        """The closed segment's utterance (None when none of its windows was labelled)."""
        n, dropped = self._segment_windows, self._segment_dropped
        mean = self._segment_sum / max(n, 1)
        self._segment_sum = np.zeros_like(self._segment_sum)
        self._segment_windows = self._segment_dropped = 0
        if n == 0:
            return None
        top = int(np.argmax(mean))
        return Utterance(
            stream=self.stream_id,
            start_s=end.start_s,
            end_s=end.end_s,
            wall_time=wall_time,
            probabilities=tuple(float(p) for p in mean),
            label=self.labels[top],
            confidence=float(mean[top]),
            windows=n,
            windows_dropped=dropped,
        )
