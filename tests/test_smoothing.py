"""Smoothing: EMA, hysteresis margin, "uncertain", validation."""

from __future__ import annotations

import pytest

from streamer.smoothing import UNCERTAIN, Smoother, SmoothingConfig

LABELS = ("Angry", "Happy", "Neutral", "Sad")


def test_first_window_sets_the_label() -> None:
    """The first confident window is the label, with its probability as confidence."""
    s = Smoother(LABELS)
    out = s.update([0.1, 0.7, 0.1, 0.1])
    assert out.label == "Happy"
    assert out.confidence == pytest.approx(0.7)


def test_hysteresis_holds_until_the_margin_is_beaten() -> None:
    """A challenger that leads by less than the margin does not take over; a clear lead does."""
    s = Smoother(LABELS, SmoothingConfig(alpha=1.0, switch_margin=0.2, uncertain_below=0.0))
    assert s.update([0.6, 0.2, 0.1, 0.1]).label == "Angry"
    assert s.update([0.4, 0.5, 0.05, 0.05]).label == "Angry"  # leads by 0.1 < 0.2
    assert s.update([0.3, 0.55, 0.1, 0.05]).label == "Happy"  # leads by 0.25


def test_ema_smooths_a_single_outlier() -> None:
    """One outlier window after a steady run does not flip the label."""
    s = Smoother(LABELS, SmoothingConfig(alpha=0.3, switch_margin=0.1, uncertain_below=0.3))
    for _ in range(5):
        s.update([0.1, 0.1, 0.7, 0.1])
    out = s.update([0.9, 0.03, 0.04, 0.03])
    assert out.label == "Neutral"
    assert out.probabilities[0] == pytest.approx(0.3 * 0.9 + 0.7 * 0.1)


def test_uncertain_when_no_class_is_clear() -> None:
    """Flat probabilities give "uncertain"; a clear class afterwards ends it."""
    s = Smoother(LABELS, SmoothingConfig(alpha=1.0, uncertain_below=0.4))
    assert s.update([0.25, 0.25, 0.25, 0.25]).label == UNCERTAIN
    assert s.update([0.1, 0.1, 0.1, 0.7]).label == "Sad"
    s.reset()
    assert s.update([0.3, 0.3, 0.2, 0.2]).label == UNCERTAIN


@pytest.mark.parametrize(
    ("field", "value"), [("alpha", 0.0), ("alpha", 1.5), ("switch_margin", 1.0),
                         ("uncertain_below", -0.1)],
)
def test_bad_config(field: str, value: float) -> None:
    """Out-of-range settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        SmoothingConfig(**{field: value})


def test_bad_probabilities_and_labels() -> None:
    """Wrong-length probabilities and a class called "uncertain" are refused."""
    with pytest.raises(ValueError, match="4 finite"):
        Smoother(LABELS).update([0.5, 0.5])
    with pytest.raises(ValueError, match="reserved"):
        Smoother(("a", UNCERTAIN))
