"""Per-window probabilities -> a rolling label with confidence (pure; one stream, any thread).

An exponential moving average of the class probabilities, with hysteresis: the held label
changes only when another class's smoothed probability beats it by ``switch_margin``. When the
top smoothed probability is below ``uncertain_below`` the output is the label ``"uncertain"``
(the held label is kept underneath, so hysteresis continues once a class is clear again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["UNCERTAIN", "Smoothed", "Smoother", "SmoothingConfig"]

UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class SmoothingConfig:
    """EMA weight of the newest window, switch margin and the "uncertain" threshold.

    ``alpha`` 1.0 means no smoothing; ``switch_margin`` 0 means plain arg-max of the EMA;
    ``uncertain_below`` 0 never says "uncertain". Defaults suit 4 classes at a 0.5 s hop.
    """

    alpha: float = 0.4
    switch_margin: float = 0.1
    uncertain_below: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if not 0.0 <= self.switch_margin < 1.0:
            raise ValueError(f"switch_margin must be in [0, 1), got {self.switch_margin!r}")
        if not 0.0 <= self.uncertain_below <= 1.0:
            raise ValueError(f"uncertain_below must be in [0, 1], got {self.uncertain_below!r}")


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
        self._ema: NDArray[np.float64] | None = None
        self._held: int | None = None

    def update(self, probabilities: Sequence[float] | NDArray[np.floating]) -> Smoothed:
        """Fold in one window's probabilities and return the rolling label."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (len(self.labels),) or not np.all(np.isfinite(p)):
            raise ValueError(
                f"expected {len(self.labels)} finite probabilities, got shape {p.shape}"
            )
        cfg = self.config
        self._ema = p.copy() if self._ema is None else cfg.alpha * p + (1 - cfg.alpha) * self._ema
        ema = self._ema
        top = int(np.argmax(ema))
        if self._held is None or ema[top] >= ema[self._held] + cfg.switch_margin:
            self._held = top
        held = self._held
        label = self.labels[held] if ema[top] >= cfg.uncertain_below else UNCERTAIN
        return Smoothed(label, float(ema[held]), tuple(float(x) for x in ema))

    def reset(self) -> None:
        """Forget the history (next window starts afresh)."""
        self._ema = None
        self._held = None
