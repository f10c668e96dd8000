"""Smoothing: EMA, hysteresis margin, "uncertain", validation, speech-segment gaps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import TIMEOUT_S
from numpy.typing import NDArray

from streamer.engine import Engine, EngineConfig
from streamer.events import Event, SpeechStart, StreamClosed, WindowLabel
from streamer.models.protocol import SingleWorkerCpuModel
from streamer.protocol.limits import UNCERTAIN
from streamer.smoothing import Smoother, SmoothingConfig
from streamer.testing import speech_like

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
                         ("uncertain_below", -0.1), ("gap_reset_s", -1.0),
                         ("gap_reset_s", float("nan")), ("gap_decay_s", 0.0)],
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


# -- speech segments --------------------------------------------------------------------------

ANGRY = [0.85, 0.05, 0.05, 0.05]
SAD = [0.05, 0.05, 0.1, 0.8]
OLD = SmoothingConfig(gap_reset_s=None, gap_decay_s=None)


def _two_segments(config: SmoothingConfig, gap_s: float) -> str:
    """Four Angry windows, a silence of ``gap_s``, then one Sad window: its smoothed label."""
    s = Smoother(LABELS, config)
    s.speech_start(0.0)
    for _ in range(4):
        assert s.update(ANGRY).label == "Angry"
    s.speech_end(3.0)
    s.speech_start(3.0 + gap_s)
    return s.update(SAD).label


def test_without_gap_handling_the_old_segment_is_held() -> None:
    """Old behaviour: the EMA runs across the silence and the first Sad window stays Angry."""
    assert _two_segments(OLD, 5.0) == "Angry"


def test_a_long_gap_resets_and_the_first_window_is_its_own() -> None:
    """At or past gap_reset_s the next segment starts afresh: its first window's label, at once."""
    config = SmoothingConfig(gap_reset_s=0.5)
    assert _two_segments(config, 0.5) == "Sad"
    s = Smoother(LABELS, config)
    s.update(ANGRY)
    s.speech_end(1.0)
    s.speech_start(2.0)
    out = s.update(SAD)
    assert out.confidence == pytest.approx(0.8)
    assert out.probabilities == pytest.approx(tuple(SAD))


def test_a_short_gap_below_the_reset_keeps_the_history() -> None:
    """A pause shorter than gap_reset_s (and no decay) leaves the EMA and the hold alone."""
    assert _two_segments(SmoothingConfig(gap_reset_s=0.5), 0.49) == "Angry"


def test_decay_toward_uniform_over_a_short_gap() -> None:
    """gap_decay_s: the EMA moves toward uniform by exp(-gap / tau) and the hold is released."""
    config = SmoothingConfig(alpha=0.5, switch_margin=0.3, uncertain_below=0.0,
                             gap_reset_s=None, gap_decay_s=0.5)
    s = Smoother(LABELS, config)
    s.update(ANGRY)
    s.speech_end(1.0)
    s.speech_start(1.5)
    keep = np.exp(-1.0)
    decayed = 0.25 + keep * (np.array(ANGRY) - 0.25)
    out = s.update(SAD)
    expected = 0.5 * np.array(SAD) + 0.5 * decayed
    assert out.probabilities == pytest.approx(tuple(expected))
    # Sad leads Angry by less than the 0.3 margin, yet takes the label: the hold was released
    assert 0.0 < expected[3] - expected[0] < 0.3
    assert out.label == "Sad"
    # a longer gap decays further: the same two segments with 5 s between end Sad by far
    assert _two_segments(config, 5.0) == "Sad"


def test_decay_then_reset_combine_by_gap_length() -> None:
    """With both set, gaps below gap_reset_s decay and longer ones reset."""
    config = SmoothingConfig(gap_reset_s=1.0, gap_decay_s=10.0, uncertain_below=0.0)
    assert _two_segments(config, 0.2) == "Angry"  # decayed a little: Angry still far ahead
    s = Smoother(LABELS, config)
    for _ in range(3):
        s.update(ANGRY)
    s.speech_end(2.0)
    s.speech_start(3.0)
    assert s.update(SAD).probabilities == pytest.approx(tuple(SAD))


def test_start_without_an_end_or_overlapping_changes_nothing() -> None:
    """The first segment, or a start before the last end, neither resets nor decays."""
    config = SmoothingConfig(gap_reset_s=0.0, gap_decay_s=0.1)
    s = Smoother(LABELS, config)
    s.speech_start(0.0)
    s.update(ANGRY)
    s.speech_end(2.0)
    s.speech_start(1.9)
    assert s.update(SAD).label == "Angry"


# -- the engine tells the smoother about segments ---------------------------------------------

RATE = 16000


class PitchModel(SingleWorkerCpuModel):
    """Implements the model protocol: Angry for a low-pitched window, Sad for a high one."""

    name = "pitch"
    labels: tuple[str, ...] = LABELS
    sample_rate_hz = RATE

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        spectrum = np.abs(np.fft.rfft(windows, axis=1))
        peak_hz = spectrum[:, 1:].argmax(axis=1) * RATE / windows.shape[1]
        return np.array([SAD if f > 200.0 else ANGRY for f in peak_hz], dtype=np.float32)


def _engine_labels(smoothing: SmoothingConfig) -> list[list[WindowLabel]]:
    """A low voice for 3 s, 1 s of silence, a high voice for 1.5 s: windows per segment."""
    events: list[Event] = []
    lock, closed = threading.Lock(), threading.Event()

    def sink(event: Event) -> None:
        with lock:
            events.append(event)
        if isinstance(event, StreamClosed):
            closed.set()

    silence = np.zeros(RATE, dtype=np.float32)
    audio = np.concatenate([silence, speech_like(3.0, pitch_hz=120.0), silence,
                            speech_like(1.5, pitch_hz=320.0, seed=1), silence])
    config = EngineConfig(smoothing=smoothing, realtime=False, workers=1)
    with Engine(PitchModel(), config, sink) as engine:
        feed = engine.open_stream("call", sample_rate_hz=RATE)
        for i in range(0, audio.size, 1600):
            feed.feed(audio[i:i + 1600])
        feed.close()
        assert closed.wait(TIMEOUT_S)
    segments: list[list[WindowLabel]] = []
    for event in events:
        if isinstance(event, SpeechStart):
            segments.append([])
        elif isinstance(event, WindowLabel):
            segments[-1].append(event)
    return segments


def test_engine_first_smoothed_label_after_a_gap_follows_the_new_segment() -> None:
    """Through the engine, the first window after a 1 s silence shows the new voice's label."""
    segments = _engine_labels(SmoothingConfig())
    assert len(segments) == 2 and all(segments)
    assert [w.label for w in segments[1]] == ["Sad"] * len(segments[1])
    assert segments[0][-1].smoothed_label == "Angry"
    assert [w.smoothed_label for w in segments[1]] == ["Sad"] * len(segments[1])


def test_engine_without_gap_reset_holds_the_previous_label() -> None:
    """The old smoothing, same audio: the first window after the gap still shows Angry."""
    segments = _engine_labels(OLD)
    assert len(segments) == 2
    assert segments[1][0].label == "Sad" and segments[1][0].smoothed_label == "Angry"


def test_warmup_averages_the_first_windows_of_a_segment_evenly() -> None:
    """Window n weighs 1/n until that falls to alpha: a short turn is averaged, not led by
    its first window; without warm-up the second window weighs alpha only."""
    config = SmoothingConfig(alpha=0.2, switch_margin=0.0, uncertain_below=0.0)
    warm = Smoother(("A", "B"), config)
    plain = Smoother(("A", "B"), SmoothingConfig(alpha=0.2, switch_margin=0.0,
                                                 uncertain_below=0.0, warmup=False))
    windows = [(1.0, 0.0), (0.0, 1.0), (0.0, 1.0)]
    warm_out = [warm.update(p) for p in windows]
    plain_out = [plain.update(p) for p in windows]
    assert warm_out[1].probabilities == pytest.approx((0.5, 0.5))
    assert warm_out[2].probabilities == pytest.approx((1 / 3, 2 / 3))
    assert warm_out[2].label == "B"  # two of the three windows say B
    assert plain_out[2].probabilities == pytest.approx((0.64, 0.36))
    assert plain_out[2].label == "A"  # the first window still outweighs both others
    for _ in range(10):  # past 1/n = alpha the EMA weight is alpha again
        last = warm.update((1.0, 0.0))
    after = warm.update((0.0, 1.0))
    assert after.probabilities[1] == pytest.approx(0.2 + 0.8 * last.probabilities[1])


def test_warmup_starts_again_after_a_reset() -> None:
    s = Smoother(("A", "B"), SmoothingConfig(alpha=0.2, switch_margin=0.0,
                                             uncertain_below=0.0, gap_reset_s=0.25))
    for _ in range(8):
        s.update((1.0, 0.0))
    s.speech_end(4.0)
    s.speech_start(5.0)  # a turn change: afresh
    s.update((0.0, 1.0))
    assert s.update((1.0, 0.0)).probabilities == pytest.approx((0.5, 0.5))
