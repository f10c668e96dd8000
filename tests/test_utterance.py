"""Utterance events: one per closed speech segment, the mean of its window probabilities."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamer.convert import event_message
from streamer.engine import Engine, EngineConfig
from streamer.events import SpeechEnd, SpeechStart, StreamClosed, Utterance, WindowLabel
from streamer.protocol.messages import UtteranceMessage, decode, encode
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S, TINY_LABELS
from tests.test_engine import Collector, ScriptedModel, call_audio, feed_blocks, silence


def test_one_utterance_per_segment_right_after_its_speech_end() -> None:
    """Each segment's utterance follows its speech_end and averages that segment's windows."""
    sink = Collector()
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(), sink) as engine:
        with engine.open_stream("call", sample_rate_hz=16000) as feed:
            feed_blocks(feed, call_audio())
        assert engine.drain(TIMEOUT_S)
    events = sink.of("call")
    assert isinstance(events[-1], StreamClosed)
    ends = [i for i, e in enumerate(events) if isinstance(e, SpeechEnd)]
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(ends) == 3 and len(utterances) == 3  # the 0.3 s burst still gets a flush window
    segment: list[WindowLabel] = []
    checked = 0
    for i, event in enumerate(events):
        if isinstance(event, SpeechStart):
            segment = []
        elif isinstance(event, WindowLabel):
            segment.append(event)
        elif isinstance(event, SpeechEnd):
            utterance = events[i + 1]
            assert isinstance(utterance, Utterance)
            assert (utterance.start_s, utterance.end_s) == (event.start_s, event.end_s)
            mean = np.mean([w.probabilities for w in segment], axis=0)
            assert utterance.probabilities == pytest.approx(tuple(mean))
            assert utterance.label == TINY_LABELS[int(np.argmax(mean))]
            assert utterance.confidence == pytest.approx(float(np.max(mean)))
            assert (utterance.windows, utterance.windows_dropped) == (len(segment), 0)
            checked += 1
    assert checked == 3


def test_dropped_windows_are_counted_and_an_all_dropped_segment_has_no_utterance() -> None:
    """Under overload the utterance counts its dropped windows; none labelled -> no utterance."""
    hold = threading.Event()
    model = ScriptedModel(hold)
    sink = Collector()
    cfg = EngineConfig(realtime=True, queue_windows=2, max_lag_s=60.0)
    with Engine(model, cfg, sink) as engine:
        feed = engine.open_stream("busy", sample_rate_hz=16000)
        feed_blocks(feed, np.concatenate([speech_like(10.0), silence(1.0)]))
        feed.close()
        hold.set()
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    (utterance,) = [e for e in sink.of("busy") if isinstance(e, Utterance)]
    assert utterance.windows == stats.windows_done
    assert utterance.windows_dropped == stats.windows_dropped > 0
    closed = sink.of("busy")[-1]
    assert isinstance(closed, StreamClosed)  # the stream's totals are reported at its close
    assert (closed.windows, closed.windows_dropped) == (stats.windows_done, stats.windows_dropped)

    sink = Collector()
    with Engine(FixedProbabilitiesModel(TINY_LABELS), EngineConfig(max_lag_s=1e-6), sink) as engine:
        with engine.open_stream("late", sample_rate_hz=16000) as feed:
            feed_blocks(feed, np.concatenate([speech_like(3.0), silence(1.0)]))
        assert engine.drain(TIMEOUT_S)
    events = sink.of("late")
    assert any(isinstance(e, SpeechEnd) for e in events)
    assert not any(isinstance(e, Utterance) for e in events)


def test_utterance_wire_message_keys_probabilities_by_label() -> None:
    """The engine's utterance becomes an 'utterance' frame that round-trips."""
    event = Utterance("c/agent", 0.5, 3.2, 1.7e9, (0.1, 0.2, 0.6, 0.1), "Neutral", 0.6, 4, 1)
    message = event_message(event, TINY_LABELS)
    assert isinstance(message, UtteranceMessage)
    assert message.probabilities == {"Angry": 0.1, "Happy": 0.2, "Neutral": 0.6, "Sad": 0.1}
    frame = encode(message)
    assert frame.startswith('{"type":"utterance","v":1,"stream":"c/agent"')
    assert decode(frame) == message
