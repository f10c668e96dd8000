"""Alert rules on the smoothed probabilities (pure cores; :class:`AlertMonitor` on the loop).

A rule reads ``<label> >= <threshold> [for <seconds>s]``, e.g. ``angry>=0.7 for 5s``: the label
is matched case-insensitively against the model's labels when the server starts, the threshold
applies to the label's **smoothed** probability (the rolling EMA behind ``smoothed_label``),
and the condition must hold for at least ``for_s`` seconds of stream time.

How one stream is evaluated (:class:`AlertEvaluator`), window by window, at each window's
``end_s``: the condition starts holding at the first window whose smoothed probability is at or
above the threshold (``since_s``); once ``end_s - since_s >= for_s`` the alert **starts** (one
``start``); the first window below the threshold **ends** it (one ``end``) and resets the run,
and so does the stream closing. Silence between speech segments has no windows and does not
break a run: the smoothed probability is a rolling state that persists across pauses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import ServerError
from streamer.events import Event, StreamClosed, WindowLabel
from streamer.protocol.messages import AlertMessage

__all__ = ["AlertChange", "AlertEvaluator", "AlertMonitor", "AlertRule", "AlertsConfig",
           "bind_rules", "parse_rule"]

_RULE = re.compile(
    r"^\s*(?P<label>[A-Za-z][\w.-]*)\s*>=\s*(?P<threshold>\d*\.?\d+)"
    r"(?:\s+for\s+(?P<for>\d*\.?\d+)\s*s)?\s*$",
    re.IGNORECASE,
)
_MAX_FOR_S = 3600.0
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
    """An alert of one rule started or ended on one stream (times are stream seconds)."""

    rule: AlertRule
    state: str  # "start" or "end"
    since_s: float
    at_s: float
    probability: float


class AlertEvaluator:
    """The rules over one stream's smoothed probabilities (pure; see the module docstring)."""

    def __init__(self, rules: Sequence[AlertRule], labels: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.labels = tuple(labels)
        self._index = [self.labels.index(rule.label) for rule in self.rules]
        self._since: list[float | None] = [None] * len(self.rules)
        self._active = [False] * len(self.rules)
        self._last_p = [0.0] * len(self.rules)
        self._last_s = 0.0

    @property
    def active(self) -> tuple[AlertRule, ...]:
        """Rules whose alert is on now."""
        return tuple(r for r, on in zip(self.rules, self._active, strict=True) if on)

    def update(self, at_s: float, smoothed: Sequence[float]) -> list[AlertChange]:
        """Fold in one window's smoothed probabilities (label order) at stream time ``at_s``."""
        if len(smoothed) != len(self.labels):
            raise ServerError(
                f"expected {len(self.labels)} smoothed probabilities, got {len(smoothed)}"
            )
        self._last_s = at_s
        changes: list[AlertChange] = []
        for i, rule in enumerate(self.rules):
            p = float(smoothed[self._index[i]])
            self._last_p[i] = p
            since = self._since[i]
            if math.isfinite(p) and p >= rule.threshold:
                if since is None:
                    since = self._since[i] = at_s
                if not self._active[i] and at_s - since + _EPS >= rule.for_s:
                    self._active[i] = True
                    changes.append(AlertChange(rule, "start", since, at_s, p))
            else:
                if self._active[i]:
                    assert since is not None
                    changes.append(AlertChange(rule, "end", since, at_s, p))
                self._active[i] = False
                self._since[i] = None
        return changes

    def close(self, at_s: float | None = None) -> list[AlertChange]:
        """The stream ended: every active alert ends (with the last probability seen)."""
        at = self._last_s if at_s is None else at_s
        changes = []
        for i, rule in enumerate(self.rules):
            if self._active[i]:
                since = self._since[i]
                assert since is not None
                changes.append(AlertChange(rule, "end", since, at, self._last_p[i]))
            self._active[i] = False
            self._since[i] = None
        return changes


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """The alert rules of one run (``run --alert``; labels checked against the model's at start)."""

    rules: tuple[AlertRule, ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(rule, AlertRule) for rule in self.rules):
            raise ServerError(f"alert rules must be AlertRule objects, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(self.rules))


class AlertMonitor:
    """Evaluators for every stream; engine events in, :class:`AlertMessage` out (event loop).

    ``on_event`` takes every engine event in stream order: windows update their stream's
    evaluator, a ``StreamClosed`` ends the stream's active alerts (call it before publishing
    the close, so the ``end`` precedes ``stream_close``). ``alert_id`` counts alerts from 1.
    """

    def __init__(self, rules: Sequence[AlertRule], labels: Sequence[str]) -> None:
        self.rules = bind_rules(rules, labels)
        self.labels = tuple(labels)
        self.alerts_started = 0
        self._streams: dict[str, AlertEvaluator] = {}
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
                evaluator = self._streams[event.stream] = AlertEvaluator(self.rules, self.labels)
            changes = evaluator.update(event.end_s, event.smoothed_probabilities)
            return [self._message(event.stream, c, wall_time) for c in changes]
        if isinstance(event, StreamClosed):
            evaluator = self._streams.pop(event.stream, None)
            if evaluator is None:
                return []
            return [self._message(event.stream, c, wall_time) for c in evaluator.close()]
        return []

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
        )
