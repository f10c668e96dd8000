"""Per-window probabilities -> a rolling label with confidence (pure; one stream, any thread).

An exponential moving average of the class probabilities, with hysteresis: the held label
changes only when another class's smoothed probability beats it by ``switch_margin``. When the
top smoothed probability is below ``uncertain_below`` the output is the label ``"uncertain"``
(the held label is kept underneath, so hysteresis continues once a class is clear again).

Warm-up (``warmup`` on, the default): the first windows after a start or a reset are averaged
with equal weight (window ``n`` weighs ``1/n``) until that weight falls to ``alpha``, then the
EMA takes over. A plain EMA would give the first window of a segment weight 1 and the second
``alpha``, so one early window would outweigh the rest of a short turn; the running mean uses
each window of a short turn equally, as the utterance label does.

Speech segments: the caller reports :meth:`Smoother.speech_end` and :meth:`Smoother.speech_start`
with stream times (the engine does, from the VAD gate's events). When the silence between two
segments is at least ``gap_reset_s`` the next segment starts afresh, as the first window of a
stream does: its label is its own window's (the previous segment's label is not held). A
shorter gap decays the EMA toward uniform with time constant ``gap_decay_s`` (when set) and
lets the next window's arg-max take the label without beating the hysteresis margin. Without
those calls (or with both settings None) the EMA runs across silence as one sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streamer.protocol.limits import UNCERTAIN

# UNCERTAIN is re-exported: its home is streamer.protocol.limits (the wire shares it)
__all__ = ["Smoothed", "Smoother", "SmoothingConfig"]


@dataclass(frozen=True, slots=True)
class SmoothingConfig:
    """EMA weight of the newest window, switch margin, the "uncertain" threshold, and what a
    silence between speech segments does (module docstring).

    ``alpha`` 1.0 means no smoothing; ``switch_margin`` 0 means plain arg-max of the EMA;
    ``uncertain_below`` 0 never says "uncertain". Defaults suit 4 classes at a 0.5 s hop.
    ``gap_reset_s`` is the silence between segments, as the VAD gate measures it (its onset and
    hangover padding are speech), from which the next segment starts afresh; None never resets.
    With the default 300 ms padding each side, 0.25 s there is about 0.85 s of real silence:
    a turn change, not a pause inside a sentence (those under 300 ms stay in one segment).
    ``gap_decay_s`` None means no decay over shorter gaps. ``warmup`` averages the first
    windows after a (re)start evenly until their weight falls to ``alpha`` (module docstring).
    """

    alpha: float = 0.4
    switch_margin: float = 0.1
    uncertain_below: float = 0.4
    gap_reset_s: float | None = 0.25
    gap_decay_s: float | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if not 0.0 <= self.switch_margin < 1.0:
            raise ValueError(f"switch_margin must be in [0, 1), got {self.switch_margin!r}")
        if not 0.0 <= self.uncertain_below <= 1.0:
            raise ValueError(f"uncertain_below must be in [0, 1], got {self.uncertain_below!r}")
        for name in ("gap_reset_s", "gap_decay_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 3600.0):
                raise ValueError(f"{name} must be None or in [0, 3600] s, got {value!r}")
        if self.gap_decay_s == 0.0:
            raise ValueError("gap_decay_s must be > 0 s (or None for no decay), got 0.0")


@dataclass(frozen=True, slots=True)
class Smoothed:
    """The rolling label after one window."""

    label: str  # a class label or UNCERTAIN
    confidence: float  # smoothed probability of the held class
    probabilities: tuple[float, ...]  # the EMA, in label order


class Smoother:
    """Rolling label for one stream over a fixed label set."""

    def __init__(self, labels: Sequence[str], config: SmoothingConfig | None = None) -> None:
        if len(labels) < 1:
            raise ValueError("need at least one label")
        if UNCERTAIN in labels:
            raise ValueError(f"{UNCERTAIN!r} is reserved and cannot be a class label")
        self.labels = tuple(labels)
        self.config = config or SmoothingConfig()
        self._ema: list[float] | None = None  # the EMA, in label order
        self._held: int | None = None
        self._speech_end_s: float | None = None  # end of the last finished segment
        self._count = 0  # windows folded in since the start or the last reset

    def update(self, probabilities: Sequence[float] | NDArray[np.floating]) -> Smoothed:
        """Fold in one window's probabilities and return the rolling label."""
        # plain floats: a handful of classes costs less in Python than in numpy calls, and
        # every step is the same IEEE double operation numpy did (the same results)
        try:
            if isinstance(probabilities, np.ndarray):
                shape = probabilities.shape
                p = [float(x) for x in probabilities.tolist()] if len(shape) == 1 else []
            else:
                p = [float(x) for x in probabilities]
                shape = (len(p),)
        except (TypeError, ValueError):
            p, shape = [], (-1,)
        if shape != (len(self.labels),) or not all(map(math.isfinite, p)):
            raise ValueError(
                f"expected {len(self.labels)} finite probabilities, got shape {shape}"
            )
        cfg = self.config
        self._count += 1
        if self._ema is None:
            ema = p
        else:
            a = max(cfg.alpha, 1.0 / self._count) if cfg.warmup else cfg.alpha
            b = 1 - a
            ema = [a * x + b * e for x, e in zip(p, self._ema, strict=True)]
        self._ema = ema
        top = _argmax(ema)
        if self._held is None or ema[top] >= ema[self._held] + cfg.switch_margin:
            self._held = top
        held = self._held
        label = self.labels[held] if ema[top] >= cfg.uncertain_below else UNCERTAIN
        return Smoothed(label, ema[held], tuple(ema))

    def speech_end(self, end_s: float) -> None:
        """A speech segment ended at stream time ``end_s`` (seconds)."""
        self._speech_end_s = float(end_s)

    def speech_start(self, start_s: float) -> None:
        """A speech segment starts at ``start_s``: reset or decay over the gap since the last end.

        A start with no finished segment before it (or overlapping it) changes nothing.
        """
        if self._speech_end_s is None:
            return
        gap = float(start_s) - self._speech_end_s
        self._speech_end_s = None
        cfg = self.config
        if gap < 0.0 or not math.isfinite(gap):
            return
        if cfg.gap_reset_s is not None and gap >= cfg.gap_reset_s:
            self.reset()
        elif cfg.gap_decay_s is not None and self._ema is not None and gap > 0.0:
            keep = math.exp(-gap / cfg.gap_decay_s)
            uniform = 1.0 / len(self.labels)
            self._ema = [uniform + keep * (e - uniform) for e in self._ema]
            self._held = None  # the next window's arg-max takes the label

    def reset(self) -> None:
        """Forget the history (next window starts afresh)."""
        self._ema = None
        self._held = None
        self._speech_end_s = None
        self._count = 0


def _argmax(values: Sequence[float]) -> int:
    """Index of the first largest value (what np.argmax gives)."""
    return max(range(len(values)), key=values.__getitem__)
