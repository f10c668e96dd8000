"""Alert rules on the smoothed probabilities (pure cores; :class:`AlertMonitor` on the loop).

A rule reads ``<label> >= <threshold> [for <seconds>s]``, e.g. ``angry>=0.7 for 5s``: the label
is matched case-insensitively against the model's labels when the server starts, the threshold
applies to the label's **smoothed** probability (the rolling EMA behind ``smoothed_label``),
and the condition must hold for at least ``for_s`` seconds of **speech**.

What the duration counts (:class:`AlertEvaluator`, one stream, window by window): windows are
cut from speech only (the VAD gate's segments; a window never spans the silence between two
segments), so the clock runs on window audio. The condition starts holding at the first window
whose smoothed probability is at or above the threshold (``since_s``, its ``end_s``; held
speech 0). Each later window that still holds adds the speech it brings that the previous
window did not cover: ``end_s - max(start_s, previous end_s)`` (a hop inside a segment; the
new segment's audio up to the window's end after a pause). Silence between segments adds
nothing, so ``at_s - since_s`` may be longer than ``speech_s``. Once ``speech_s >= for_s`` the
alert **starts** (one ``start``).

An alert **ends** (one ``end`` with a ``reason``, see
:data:`~streamer.protocol.messages.ALERT_END_REASONS`):

- ``cleared``: the first window below the threshold; the run resets;
- ``silence``: no window for more than ``max_gap_s`` seconds (default 10): a pause up to that
  long keeps the held speech time (the clock only pauses), a longer one resets the run.
  Noticed at the next window (stream time: its ``start_s`` minus the previous ``end_s``) or,
  while the stream stays quiet, by :meth:`AlertMonitor.expire` (the server's clock since the
  stream's ``speech_end``), whichever comes first; the end's ``at_s`` is the last window's
  ``end_s`` (the last speech heard) either way;
- ``stream_closed`` / ``shutdown``: the stream ended (``shutdown``: the server is stopping).

``speech_s`` is the held speech time: at a ``start`` at least ``for_s``; at an ``end`` the speech
time from ``since_s`` to the last window that held. Silence can neither start an alert nor keep
one alive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import ServerError
from streamer.events import Event, SpeechEnd, SpeechStart, StreamClosed, WindowLabel
from streamer.protocol.messages import AlertMessage

__all__ = ["DEFAULT_MAX_GAP_S", "AlertChange", "AlertEvaluator", "AlertMonitor", "AlertRule",
           "AlertsConfig", "bind_rules", "close_reason", "parse_rule"]

#: the longest pause without speech that keeps a holding condition's speech time (seconds)
DEFAULT_MAX_GAP_S = 10.0

_RULE = re.compile(
    r"^\s*(?P<label>[A-Za-z][\w.-]*)\s*>=\s*(?P<threshold>\d*\.?\d+)"
    r"(?:\s+for\s+(?P<for>\d*\.?\d+)\s*s)?\s*$",
    re.IGNORECASE,
)
_MAX_FOR_S = 3600.0
_CLOSE_REASONS = ("stream_closed", "shutdown")  # of streamer.protocol ALERT_END_REASONS
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule: ``label``'s smoothed probability >= ``threshold`` for ``for_s`` seconds."""

    label: str
    threshold: float
    for_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ServerError(f"alert label must be a non-empty string, got {self.label!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ServerError(f"alert threshold must be 0..1, got {self.threshold!r}")
        if not 0.0 <= self.for_s <= _MAX_FOR_S:
            raise ServerError(f"alert duration must be 0..{_MAX_FOR_S:g} s, got {self.for_s!r}")

    @property
    def text(self) -> str:
        """Canonical text, e.g. ``Angry>=0.7 for 5s``."""
        return f"{self.label}>={self.threshold:g} for {self.for_s:g}s"


def parse_rule(text: str) -> AlertRule:
    """``"angry>=0.7 for 5s"`` -> AlertRule (label not yet checked: see :func:`bind_rules`)."""
    match = _RULE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ServerError(
            f"bad alert rule {text!r}: write LABEL>=THRESHOLD [for SECONDSs], "
            "e.g. 'angry>=0.7 for 5s'"
        )
    seconds = match.group("for")
    try:
        return AlertRule(
            match.group("label"), float(match.group("threshold")),
            float(seconds) if seconds is not None else 0.0,
        )
    except ServerError as exc:
        raise ServerError(f"bad alert rule {text!r}: {exc}") from exc


def bind_rules(rules: Sequence[AlertRule], labels: Sequence[str]) -> tuple[AlertRule, ...]:
    """Rules with their label spelled as the model spells it; unknown labels are an error."""
    by_lower = {label.lower(): label for label in labels}
    bound = []
    for rule in rules:
        label = by_lower.get(rule.label.lower())
        if label is None:
            raise ServerError(
                f"alert rule {rule.text!r}: unknown label {rule.label!r}; the model's labels "
                f"are {', '.join(labels)}"
            )
        bound.append(AlertRule(label, rule.threshold, rule.for_s))
    return tuple(bound)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert of one rule started or ended on one stream (times are stream seconds).

    ``reason`` is empty for a start and one of ``ALERT_END_REASONS`` for an end; ``speech_s``
    is the speech time the condition held (see the module docstring).
    """

    rule: AlertRule
    state: str  # "start" or "end"
    since_s: float
    at_s: float
    probability: float
    reason: str = ""
    speech_s: float = 0.0


@dataclass(slots=True)
class _Run:
    """One rule's condition holding on one stream: since when, for how much speech."""

    since_s: float
    speech_s: float = 0.0
    active: bool = False


class AlertEvaluator:
    """The rules over one stream's smoothed probabilities (pure; see the module docstring)."""

    def __init__(
        self, rules: Sequence[AlertRule], labels: Sequence[str], *,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
    ) -> None:
        self.rules = tuple(rules)
        self.labels = tuple(labels)
        self.max_gap_s = max_gap_s
        self._index = [self.labels.index(rule.label) for rule in self.rules]
        self._runs: list[_Run | None] = [None] * len(self.rules)
        self._last_p = [0.0] * len(self.rules)
        self._last_end_s: float | None = None  # end of the last window: the last speech heard

    @property
    def active(self) -> tuple[AlertRule, ...]:
        """Rules whose alert is on now."""
        return tuple(r for r, run in zip(self.rules, self._runs, strict=True)
                     if run is not None and run.active)

    @property
    def holding(self) -> bool:
        """Whether any rule's condition is holding now (an alert on, or on its way)."""
        return any(run is not None for run in self._runs)

    def update(self, start_s: float, end_s: float, smoothed: Sequence[float]) -> list[AlertChange]:
        """Fold in one window (stream seconds) and its smoothed probabilities (label order)."""
        if len(smoothed) != len(self.labels):
            raise ServerError(
                f"expected {len(self.labels)} smoothed probabilities, got {len(smoothed)}"
            )
        last = self._last_end_s
        changes: list[AlertChange] = []
        if last is not None and start_s - last > self.max_gap_s + _EPS:
            changes += self.silence()
        # the speech this window adds: its audio the previous window did not cover
        added = max(0.0, end_s - (start_s if last is None else max(start_s, last)))
        self._last_end_s = end_s if last is None else max(end_s, last)
        for i, rule in enumerate(self.rules):
            p = float(smoothed[self._index[i]])
            self._last_p[i] = p
            change = self._fold(i, rule, p, end_s, added)
            if change is not None:
                changes.append(change)
        return changes

    def _fold(self, i: int, rule: AlertRule, p: float, end_s: float,
              added: float) -> AlertChange | None:
        """One rule at one window: extend, start, end or leave its run."""
        run = self._runs[i]
        if not (math.isfinite(p) and p >= rule.threshold):
            self._runs[i] = None
            if run is not None and run.active:
                return AlertChange(rule, "end", run.since_s, end_s, p, "cleared", run.speech_s)
            return None
        if run is None:
            run = self._runs[i] = _Run(since_s=end_s)
        else:
            run.speech_s += added
        if not run.active and run.speech_s + _EPS >= rule.for_s:
            run.active = True
            return AlertChange(rule, "start", run.since_s, end_s, p, "", run.speech_s)
        return None

    def silence(self) -> list[AlertChange]:
        """The stream went quiet for longer than ``max_gap_s``: reset; active alerts end."""
        return self._end_all("silence")

    def close(self, reason: str = "stream_closed") -> list[AlertChange]:
        """The stream ended (``reason`` "stream_closed" or "shutdown"): every active alert ends."""
        if reason not in _CLOSE_REASONS:
            raise ServerError(f"a closing stream's alerts end with one of {_CLOSE_REASONS}, "
                              f"got {reason!r}")
        return self._end_all(reason)

    def _end_all(self, reason: str) -> list[AlertChange]:
        """Reset every run; the active ones end at the last window's end (the last speech)."""
        changes = []
        for i, rule in enumerate(self.rules):
            run = self._runs[i]
            if run is not None and run.active:
                assert self._last_end_s is not None  # a run exists only after a window
                changes.append(AlertChange(rule, "end", run.since_s, self._last_end_s,
                                           self._last_p[i], reason, run.speech_s))
            self._runs[i] = None
        return changes


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """The alert rules of one run (``run --alert``; labels checked against the model's at start).

    ``max_gap_s`` (``run --alert-max-gap-s``): the longest pause without speech that keeps a
    holding condition's speech time; a longer one resets it and ends its alert (``silence``).
    """

    rules: tuple[AlertRule, ...] = ()
    max_gap_s: float = DEFAULT_MAX_GAP_S

    def __post_init__(self) -> None:
        if not all(isinstance(rule, AlertRule) for rule in self.rules):
            raise ServerError(f"alert rules must be AlertRule objects, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(self.rules))
        gap = self.max_gap_s
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) \
                or not 0.0 <= gap <= _MAX_FOR_S:
            raise ServerError(f"alert max gap must be 0..{_MAX_FOR_S:g} s, got {gap!r}")


def close_reason(stream_reason: str) -> str:
    """The alert end reason for a stream that closed with ``stream_reason``."""
    return "shutdown" if stream_reason == "shutdown" else "stream_closed"


class AlertMonitor:
    """Evaluators for every stream; engine events in, :class:`AlertMessage` out (event loop).

    ``on_event`` takes every engine event in stream order: windows update their stream's
    evaluator, a ``StreamClosed`` ends the stream's active alerts (call it before publishing
    the close, so the ``end`` precedes ``stream_close``), ``SpeechEnd`` / ``SpeechStart`` mark
    the stream quiet / speaking at ``wall_time``. ``expire`` (called on every stats tick) ends
    the alerts of streams quiet for more than ``max_gap_s`` by that clock. ``alert_id`` counts
    alerts from 1.
    """

    def __init__(
        self, rules: Sequence[AlertRule], labels: Sequence[str], *,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
    ) -> None:
        self.rules = bind_rules(rules, labels)
        self.labels = tuple(labels)
        self.max_gap_s = max_gap_s
        self.alerts_started = 0
        self._streams: dict[str, AlertEvaluator] = {}
        self._quiet_since: dict[str, float] = {}  # stream -> wall time of its speech_end
        self._ids: dict[tuple[str, AlertRule], int] = {}

    def on_event(self, event: Event, *, wall_time: float) -> list[AlertMessage]:
        """Alert messages caused by ``event`` (usually none)."""
        if not self.rules:
            return []
        if isinstance(event, WindowLabel):
            if not event.smoothed_probabilities:
                return []
            evaluator = self._streams.get(event.stream)
            if evaluator is None:
                evaluator = self._streams[event.stream] = AlertEvaluator(
                    self.rules, self.labels, max_gap_s=self.max_gap_s)
            changes = evaluator.update(event.start_s, event.end_s, event.smoothed_probabilities)
            return self._messages(event.stream, changes, wall_time)
        if isinstance(event, SpeechStart):
            self._quiet_since.pop(event.stream, None)
        elif isinstance(event, SpeechEnd):
            self._quiet_since[event.stream] = wall_time
        elif isinstance(event, StreamClosed):
            self._quiet_since.pop(event.stream, None)
            evaluator = self._streams.pop(event.stream, None)
            if evaluator is not None:
                changes = evaluator.close(close_reason(event.reason))
                return self._messages(event.stream, changes, wall_time)
        return []

    def expire(self, wall_time: float) -> list[AlertMessage]:
        """End the alerts of streams quiet (no speech) for more than ``max_gap_s`` until now."""
        out: list[AlertMessage] = []
        for stream, since in list(self._quiet_since.items()):
            if wall_time - since <= self.max_gap_s:
                continue
            del self._quiet_since[stream]
            evaluator = self._streams.get(stream)
            if evaluator is not None and evaluator.holding:
                out += self._messages(stream, evaluator.silence(), wall_time)
        return out

    def _messages(self, stream: str, changes: list[AlertChange],
                  wall_time: float) -> list[AlertMessage]:
        return [self._message(stream, change, wall_time) for change in changes]

    def _message(self, stream: str, change: AlertChange, wall_time: float) -> AlertMessage:
        key = (stream, change.rule)
        if change.state == "start":
            self.alerts_started += 1
            self._ids[key] = self.alerts_started
            alert_id = self.alerts_started
        else:
            alert_id = self._ids.pop(key, 0)
        return AlertMessage(
            alert_id=alert_id,
            stream=stream,
            state=change.state,
            rule=change.rule.text,
            label=change.rule.label,
            threshold=change.rule.threshold,
            for_s=change.rule.for_s,
            since_s=float(change.since_s),
            at_s=float(change.at_s),
            probability=float(change.probability),
            wall_time=wall_time,
            reason=change.reason,
            speech_s=round(float(change.speech_s), 6),
        )
