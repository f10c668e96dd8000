"""The engine end to end: ordering, seq, drops under overload, backpressure, shutdown, errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TIMEOUT_S, TINY_LABELS

from streamer.engine import Engine, EngineConfig
from streamer.errors import AudioError, ModelError, StreamerError
from streamer.events import (
    Event,
    SpeechEnd,
    SpeechStart,
    StreamClosed,
    StreamOpened,
    WindowLabel,
)
from streamer.models.protocol import SingleWorkerCpuModel
from streamer.protocol.limits import UNCERTAIN
from streamer.testing import FixedProbabilitiesModel, speech_like

RATE = 16000


class ScriptedModel(SingleWorkerCpuModel):
    """Implements the model protocol with fixed outputs (Neutral 0.7) and hooks for tests.

    ``hold`` (if given) makes every call wait until it is set, to build an overload; ``fail``
    makes every call raise; ``entered`` is set by the first call; ``batch_sizes`` records calls.
    """

    name = "scripted"
    labels: tuple[str, ...] = TINY_LABELS
    sample_rate_hz = RATE

    def __init__(self, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.hold = hold
        self.fail = fail
        self.calls = 0
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(TIMEOUT_S)
        self.calls += 1
        self.batch_sizes.append(windows.shape[0])
        if self.fail:
            raise RuntimeError("scripted failure")
        out = np.full((windows.shape[0], 4), 0.1, dtype=np.float32)
        out[:, 2] = 0.7
        return out


class Collector:
    """A thread-safe sink that records every event and signals StreamClosed per stream."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.closed: dict[str, threading.Event] = {}

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if isinstance(event, StreamClosed):
                self.closed.setdefault(event.stream, threading.Event()).set()

    def wait_closed(self, stream: str) -> bool:
        """Wait for the stream's StreamClosed, which a worker may deliver after feed.close()."""
        with self.lock:
            closed = self.closed.setdefault(stream, threading.Event())
        return closed.wait(TIMEOUT_S)

    def of(self, stream: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if getattr(e, "stream", None) == stream]

    def labels(self, stream: str) -> list[WindowLabel]:
        return [e for e in self.of(stream) if isinstance(e, WindowLabel)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def call_audio() -> np.ndarray:
    """Speech bursts with pauses: 3.2 s, 0.8 s and 0.3 s of speech."""
    return np.concatenate([
        silence(1.0), speech_like(3.2), silence(1.0), speech_like(0.8, seed=1), silence(1.0),
        speech_like(0.3, seed=2), silence(1.0),
    ])


def feed_blocks(feed, audio: np.ndarray, block: int = 1600) -> None:
    for i in range(0, audio.size, block):
        feed.feed(audio[i : i + block])


def check_stream_order(events: list[Event]) -> None:
    """Opened first, Closed last, speech start/end alternate, labels inside segments, seq 0..n."""
    assert isinstance(events[0], StreamOpened)
    assert isinstance(events[-1], StreamClosed)
    assert not any(isinstance(e, (StreamOpened, StreamClosed)) for e in events[1:-1])
    in_speech = False
    seg_start = 0.0
    seqs = []
    for e in events[1:-1]:
        if isinstance(e, SpeechStart):
            assert not in_speech
            in_speech, seg_start = True, e.start_s
        elif isinstance(e, SpeechEnd):
            assert in_speech and e.start_s == seg_start
            in_speech = False
        elif isinstance(e, WindowLabel):
            assert in_speech
            assert seg_start <= e.start_s < e.end_s
            seqs.append(e.seq)
    assert not in_speech
    assert seqs == list(range(len(seqs)))


def test_events_in_order_with_expected_windows() -> None:
    """One stream: ordered events; windows at 2 s then every hop, plus each segment's flush."""
    sink = Collector()
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), sink) as engine:
        with engine.open_stream("call", sample_rate_hz=RATE, metadata={"who": "x"}) as feed:
            feed_blocks(feed, call_audio())
        assert sink.wait_closed("call")
        stats = engine.stats()
    events = sink.of("call")
    check_stream_order(events)
    opened, closed = events[0], events[-1]
    assert isinstance(opened, StreamOpened) and isinstance(closed, StreamClosed)
    assert opened.metadata == {"who": "x"}
    labels = sink.labels("call")
    # segment 1 ~0.7-4.5 s (3.8 s): windows at 2.0, 2.5, 3.0, 3.5 s of it (+ flush of 0.3 s: no)
    # segment 2 (1.4 s) and 3 (0.9 s): one flush window each
    assert len(labels) == 6
    assert stats.windows_done == 6 and stats.windows_dropped == 0
    for label in labels:
        assert label.label == "Neutral" and label.smoothed_label == "Neutral"
        assert label.probabilities == pytest.approx((0.1, 0.1, 0.7, 0.1))
    assert [round(x.end_s - x.start_s, 2) for x in labels[:4]] == [2.0] * 4
    assert labels[1].end_s - labels[0].end_s == pytest.approx(0.5)
    assert closed.end_s == pytest.approx(call_audio().size / RATE)
    assert closed.reason == "end"


def test_resampled_stream_matches_model_rate_stream() -> None:
    """A 44.1 kHz stream yields the same windows (times within one VAD frame) as 16 kHz."""
    import soxr

    audio = call_audio()
    audio44 = soxr.resample(audio, RATE, 44100).astype(np.float32)
    sink = Collector()
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(realtime=False), sink) as engine:
        with engine.open_stream("a", sample_rate_hz=RATE) as feed:
            feed_blocks(feed, audio)
        with engine.open_stream("b", sample_rate_hz=44100) as feed:
            feed_blocks(feed, audio44, block=4410)
        assert engine.drain(TIMEOUT_S)
    a, b = sink.labels("a"), sink.labels("b")
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert abs(x.start_s - y.start_s) <= 0.031 and abs(x.end_s - y.end_s) <= 0.031
    closed = sink.of("b")[-1]
    assert isinstance(closed, StreamClosed)
    assert closed.end_s == pytest.approx(audio.size / RATE, abs=1e-3)


def test_overload_drops_and_counts_in_realtime() -> None:
    """With the model stalled, a full queue drops the oldest windows and counts them."""
    hold = threading.Event()
    model = ScriptedModel(hold)
    sink = Collector()
    cfg = EngineConfig(realtime=True, queue_windows=2, max_lag_s=60.0)
    audio = np.concatenate([speech_like(10.0), silence(1.0)])
    with Engine(model, cfg, sink) as engine:
        feed = engine.open_stream("busy", sample_rate_hz=RATE)
        feed_blocks(feed, audio)
        feed.close()
        stats = engine.stats()
        assert stats.windows_dropped >= 14  # 17 windows; at most 1 running + 2 queued survive
        assert stats.lag_s > 0.0
        hold.set()
        assert engine.drain(TIMEOUT_S)
        final = engine.stats()
    assert final.windows_done + final.windows_dropped == 17
    check_stream_order(sink.of("busy"))
    assert len(sink.labels("busy")) == final.windows_done


def test_stale_windows_are_dropped_by_age() -> None:
    """Windows older than max_lag_s when a worker reaches them are dropped, not run."""
    model = FixedProbabilitiesModel(TINY_LABELS)
    sink = Collector()
    cfg = EngineConfig(realtime=True, queue_windows=64, max_lag_s=1e-6)
    with Engine(model, cfg, sink) as engine:
        with engine.open_stream("slow", sample_rate_hz=RATE) as feed:
            feed_blocks(feed, np.concatenate([speech_like(4.0), silence(1.0)]))
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    assert model.calls == 0
    assert stats.windows_done == 0 and stats.windows_dropped == 5
    check_stream_order(sink.of("slow"))
    assert sink.labels("slow") == []


def test_backpressure_loses_nothing_when_not_realtime() -> None:
    """realtime=False with a one-window queue: feed blocks instead of dropping."""
    sink = Collector()
    cfg = EngineConfig(realtime=False, queue_windows=1, max_lag_s=1e-6)
    with Engine(FixedProbabilitiesModel(TINY_LABELS), cfg, sink) as engine:
        with engine.open_stream("file", sample_rate_hz=RATE) as feed:
            feed.feed(np.concatenate([speech_like(10.0), silence(1.0)]))
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    assert stats.windows_dropped == 0 and stats.windows_done == 17
    check_stream_order(sink.of("file"))


def test_streams_are_independent_and_ordered_with_two_workers() -> None:
    """Interleaved streams on two workers: each keeps its own order and seq from 0."""
    sink = Collector()
    audio = call_audio()
    cfg = EngineConfig(realtime=False, workers=2)
    with Engine(FixedProbabilitiesModel(TINY_LABELS), cfg, sink) as engine:
        feeds = [engine.open_stream(f"s{i}", sample_rate_hz=RATE) for i in range(3)]
        for i in range(0, audio.size, 800):
            for feed in feeds:
                feed.feed(audio[i : i + 800])
        for feed in feeds:
            feed.close()
        assert engine.drain(TIMEOUT_S)
    for i in range(3):
        check_stream_order(sink.of(f"s{i}"))
        assert len(sink.labels(f"s{i}")) == 6


def test_close_is_idempotent_and_closes_open_streams() -> None:
    """Engine.close() twice is fine; open streams end with reason "shutdown"; reuse errors."""
    sink = Collector()
    engine = Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), sink)
    feed = engine.open_stream("left-open", sample_rate_hz=RATE)
    feed.feed(np.concatenate([silence(0.5), speech_like(1.0)]))
    engine.close()
    engine.close()
    feed.close()
    events = sink.of("left-open")
    check_stream_order(events)
    assert isinstance(events[-1], StreamClosed) and events[-1].reason == "shutdown"
    assert len(sink.labels("left-open")) == 1  # the open segment was flushed and classified
    with pytest.raises(AudioError, match="closed"):
        feed.feed(silence(0.1))
    with pytest.raises(StreamerError, match="closed"):
        engine.open_stream("late", sample_rate_hz=RATE)


def test_duplicate_stream_id_is_refused() -> None:
    """Opening a stream id that is already open raises StreamerError."""
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), Collector()) as engine:
        engine.open_stream("x", sample_rate_hz=RATE)
        with pytest.raises(StreamerError, match="already open"):
            engine.open_stream("x", sample_rate_hz=RATE)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (np.zeros(100, dtype=np.int16), "dtype int16"),
        (np.zeros(100, dtype=np.float64), "dtype float64"),
        (np.zeros((100, 2), dtype=np.float32), r"shape \(100, 2\)"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
        ([0.0, 0.1], "numpy array"),
    ],
)
def test_bad_blocks_are_refused(block: object, match: str) -> None:
    """Wrong dtype, rank, non-finite values or non-arrays raise AudioError naming the problem."""
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), Collector()) as engine:
        feed = engine.open_stream("x", sample_rate_hz=RATE)
        with pytest.raises(AudioError, match=match):
            feed.feed(block)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [4000, 250_000, 0, 16000.5])
def test_unsupported_rates_are_refused(rate: object) -> None:
    """Rates outside 8000-192000 Hz raise AudioError listing the allowed range."""
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), Collector()) as engine:
        with pytest.raises(AudioError, match="8000 to 192000"):
            engine.open_stream("x", sample_rate_hz=rate)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("window_s", 0.0), ("hop_s", 3.0), ("min_window_s", 5.0), ("max_lag_s", 0.0),
     ("queue_windows", 0), ("workers", 0)],
)
def test_bad_engine_config(field: str, value: Any) -> None:
    """Inconsistent EngineConfig values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


def test_model_failure_skips_windows_and_stream_still_closes() -> None:
    """A model that raises: windows are logged, counted as dropped, StreamClosed still comes."""
    sink = Collector()
    with Engine(ScriptedModel(fail=True), EngineConfig(), sink) as engine:
        with engine.open_stream("bad", sample_rate_hz=RATE) as feed:
            feed.feed(np.concatenate([speech_like(2.5), silence(1.0)]))
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    assert stats.windows_done == 0 and stats.windows_dropped == 2
    assert sink.labels("bad") == []
    assert isinstance(sink.of("bad")[-1], StreamClosed)


def test_wrong_model_rate_is_refused() -> None:
    """A model at 8 kHz cannot be used by the 16 kHz engine."""
    model = FixedProbabilitiesModel(TINY_LABELS, sample_rate_hz=8000)
    with pytest.raises(ModelError, match="8000"):
        Engine(model, EngineConfig(), Collector())


def test_sink_errors_do_not_stop_the_engine() -> None:
    """A sink that raises is logged; later events still arrive."""
    seen: list[Event] = []

    def sink(event: Event) -> None:
        seen.append(event)
        if isinstance(event, WindowLabel):
            raise RuntimeError("sink broke")

    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), sink) as engine:
        with engine.open_stream("x", sample_rate_hz=RATE) as feed:
            feed.feed(np.concatenate([speech_like(2.6), silence(1.0)]))
        assert engine.drain(TIMEOUT_S)
    assert isinstance(seen[-1], StreamClosed)
    assert sum(isinstance(e, WindowLabel) for e in seen) == 2


class Counters:
    """Capture counters as a MicrophoneSource exposes them."""

    def __init__(self) -> None:
        self.blocks_dropped = 0
        self.input_overflows = 0


def test_capture_counters_reach_stats() -> None:
    """Counters of a registered capture are summed in stats, and kept after the stream closes."""
    counters = Counters()
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), Collector()) as engine:
        feed = engine.open_stream("mic", sample_rate_hz=48000, capture=counters)
        counters.blocks_dropped, counters.input_overflows = 3, 2
        stats = engine.stats()
        assert (stats.blocks_dropped, stats.input_overflows) == (3, 2)
        feed.close()
        counters.blocks_dropped = 99  # no longer read once the stream closed
        assert (engine.stats().blocks_dropped, engine.stats().input_overflows) == (3, 2)


def test_real_tiny_wav2vec2_end_to_end(tiny_wav2vec2: Path) -> None:
    """The real model layer with a tiny random checkpoint labels every window in order."""
    from streamer.models.loading import load_model

    model = load_model(tiny_wav2vec2, device="cpu")
    sink = Collector()
    cfg = EngineConfig(realtime=False)
    with Engine(model, cfg, sink) as engine:
        with engine.open_stream("tiny", sample_rate_hz=22050) as feed:
            import soxr

            audio = soxr.resample(call_audio(), RATE, 22050).astype(np.float32)
            feed_blocks(feed, audio, block=2205)
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    check_stream_order(sink.of("tiny"))
    labels = sink.labels("tiny")
    assert len(labels) == 6 and stats.windows_dropped == 0
    for label in labels:
        assert label.label in TINY_LABELS
        assert sum(label.probabilities) == pytest.approx(1.0, abs=1e-4)
        assert label.smoothed_label in (*TINY_LABELS, UNCERTAIN)


def test_urdu_call_with_the_bundled_model(urdu_dir: Path) -> None:
    """A call assembled from four URDU clips with pauses: speech found in each, labels in order."""
    from streamer.audio import read_audio
    from streamer.models.loading import load_model

    clips = [sorted((urdu_dir / emotion).glob("*.wav"))[0] for emotion in TINY_LABELS]
    parts: list[np.ndarray] = []
    spans, t = [], 1.0
    for clip in clips:
        audio = read_audio(clip, target_rate_hz=44100)
        parts += [audio, np.zeros(int(1.5 * 44100), dtype=np.float32)]
        spans.append((t, t + audio.size / 44100))
        t += audio.size / 44100 + 1.5
    call = np.concatenate([np.zeros(44100, dtype=np.float32), *parts])
    model = load_model(None, device="cpu")
    sink = Collector()
    with Engine(model, EngineConfig(realtime=False), sink) as engine:
        with engine.open_stream("urdu-call", sample_rate_hz=44100) as feed:
            feed_blocks(feed, call, block=4410)
        assert engine.drain(TIMEOUT_S)
    events = sink.of("urdu-call")
    check_stream_order(events)
    labels = sink.labels("urdu-call")
    for start, end in spans:  # every clip is covered by at least one window
        assert any(w.start_s < end and w.end_s > start for w in labels)
    for w in labels:  # and no window lies wholly inside a pause
        assert any(w.start_s < end + 0.4 and w.end_s > start - 0.4 for start, end in spans)
        assert w.label in model.labels


def test_round_robin_across_streams() -> None:
    """A stream with a backlog does not starve another: the worker alternates between them."""
    hold = threading.Event()
    model = ScriptedModel(hold)
    sink = Collector()
    with Engine(model, EngineConfig(realtime=False), sink) as engine:
        a = engine.open_stream("a", sample_rate_hz=RATE)
        b = engine.open_stream("b", sample_rate_hz=RATE)
        a.feed(np.concatenate([speech_like(3.5), silence(1.0)]))  # 4 windows
        assert model.entered.wait(TIMEOUT_S)  # the worker holds a's first window
        b.feed(np.concatenate([speech_like(2.5, seed=5), silence(1.0)]))  # 2 windows
        hold.set()
        a.close()
        b.close()
        assert engine.drain(TIMEOUT_S)
    with sink.lock:
        order = [(e.stream, e.seq) for e in sink.events if isinstance(e, WindowLabel)]
    assert order == [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("a", 3)]


def test_two_workers_give_the_same_labels_as_one(tiny_wav2vec2: Path) -> None:
    """The real tiny checkpoint on two workers labels every window exactly as one worker does."""
    from streamer.models.loading import load_model

    model = load_model(tiny_wav2vec2, device="cpu")
    audio = call_audio()
    results = []
    for workers in (1, 2):
        sink = Collector()
        # one window per call: an int8 graph (first-use optimisation may pick one) quantises
        # its activations with one scale per call, so batch mates would move the numbers
        config = EngineConfig(realtime=False, workers=workers, max_batch=1)
        with Engine(model, config, sink) as engine:
            for name in ("x", "y"):
                with engine.open_stream(name, sample_rate_hz=RATE) as feed:
                    feed.feed(audio)
            assert engine.drain(TIMEOUT_S)
        results.append([(w.stream, w.seq, w.probabilities) for w in
                        sorted(sink.labels("x") + sink.labels("y"),
                               key=lambda w: (w.stream, w.seq))])
    assert len(results[0]) == 12
    for one, two in zip(results[0], results[1], strict=True):
        assert one[:2] == two[:2]
        assert one[2] == pytest.approx(two[2], abs=1e-5)
