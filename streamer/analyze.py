"""Offline analysis of audio files into a timeline (runs on the caller's thread).

:func:`analyze_files` drives the same :class:`~streamer.engine.Engine`, conversion
(:mod:`streamer.convert`) and row format (:mod:`streamer.protocol.timeline`) as the live server,
without a server, as fast as the model allows: ``realtime=False`` gives backpressure instead of
drops. The engine's worker threads hand events to a list; this thread waits for each file's
events (``Engine.drain``) before writing its rows, so rows come in the order the server would
publish them: windows, the alerts each one causes (when alert rules are given), utterances.
The timeline is the window file and the utterance file (plus the alert file with rules), as
:class:`~streamer.protocol.timeline.TimelineFiles` writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from streamer.convert import utterance_message, window_message
from streamer.engine import Engine, EngineConfig
from streamer.errors import StreamerError
from streamer.events import Event, SpeechStart, StreamClosed, Utterance, WindowLabel
from streamer.models.protocol import ClassifierModel
from streamer.protocol.messages import AlertMessage, Message, UtteranceMessage, WindowMessage
from streamer.protocol.timeline import (
    TimelineFiles,
    TimelineKind,
    check_new_timeline,
    new_session_id,
    timeline_format,
)
from streamer.sources import FileSource

__all__ = ["AlertRules", "AnalyzeResult", "analyze_files", "analyze_kinds"]

logger = logging.getLogger(__name__)

#: alert rules as analyze runs them: every engine event in stream order in, the alert messages
#: it causes out (the server's ``AlertMonitor.on_event``; windows start alerts, windows and a
#: stream's close end them)
AlertRules = Callable[[Event], Sequence[AlertMessage]]


@dataclass(frozen=True, slots=True)
class AnalyzeResult:
    """What ``analyze`` did for one file: what it produced, and the rows of it the timeline
    had already (when appending)."""

    path: Path
    stream: str
    duration_s: float
    windows: int
    speech_segments: int
    utterances: int = 0
    alerts: int = 0  # alert starts and ends
    rows_skipped: int = 0  # rows the timeline had already (appending)


def analyze_kinds(*, alerts: bool) -> tuple[TimelineKind, ...]:
    """The timeline files analyze writes: windows and utterances, alerts with rules."""
    return ("window", "utterance", "alert") if alerts else ("window", "utterance")


def analyze_files(
    model: ClassifierModel,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    engine_config: EngineConfig,
    channel: int | None = None,
    session: str | None = None,
    alerts: AlertRules | None = None,
    append: bool = False,
) -> list[AnalyzeResult]:
    """Run each file through the engine as fast as possible and write its timeline rows.

    Same engine, conversion and row format as the live server (stream name = file stem, made
    unique with ``-2``, ``-3`` ...), but ``realtime=False``: nothing is dropped. Writes the
    windows to ``out`` and the utterances (and, with ``alerts``, the alert starts and ends)
    beside it (:func:`~streamer.protocol.timeline.kind_path`). A timeline file that holds rows
    already is a TimelineError unless ``append``; appending leaves out rows already there.
    Every file is opened (and checked) before anything is written.
    """
    timeline_format(out)  # a bad suffix fails before any work
    kinds = analyze_kinds(alerts=alerts is not None)
    check_new_timeline(out, kinds, append=append)
    if not paths:
        raise StreamerError("no audio files given")
    config = replace(engine_config, realtime=False)
    session = session or new_session_id()
    sources: list[FileSource] = []
    try:
        for path, name in zip(paths, _stream_names(paths), strict=True):
            sources.append(FileSource(path, channel=channel, realtime=False, name=name))
        events: list[Event] = []  # appended by engine threads (list.append is atomic)
        with Engine(model, config, events.append) as engine, \
                TimelineFiles(out, model.labels, kinds=kinds, append=append) as files:
            return [_analyze_one(engine, source, events, files, alerts=alerts, session=session)
                    for source in sources]
    finally:
        for source in sources:
            source.close()


def _stream_names(paths: Sequence[str | Path]) -> list[str]:
    """One stream name per file, in order: its stem, made unique with ``-2``, ``-3`` ..."""
    names: list[str] = []
    for path in paths:
        name = Path(path).stem or "audio"
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}-{n}"
        names.append(unique)
    return names


def _analyze_one(
    engine: Engine,
    source: FileSource,
    events: list[Event],
    files: TimelineFiles,
    *,
    alerts: AlertRules | None,
    session: str,
) -> AnalyzeResult:
    """Feed one file, wait for its events, write its rows; what it produced."""
    events.clear()
    skipped_before = sum(files.skipped.values())
    with engine.open_stream(
        source.name, sample_rate_hz=source.sample_rate_hz, metadata={"source": "FileSource"},
    ) as feed:
        for block in source.blocks():
            feed.feed(block)
    engine.drain(None)
    produced = list(events)
    messages = _rows_of(produced, files.labels, alerts)
    for message in messages:
        files.write(message, session=session)
    closed = [e for e in produced if isinstance(e, StreamClosed)]
    result = AnalyzeResult(
        path=source.path,
        stream=source.name,
        duration_s=closed[-1].end_s if closed else source.duration_s,
        windows=sum(isinstance(m, WindowMessage) for m in messages),
        speech_segments=sum(isinstance(e, SpeechStart) for e in produced),
        utterances=sum(isinstance(m, UtteranceMessage) for m in messages),
        alerts=sum(isinstance(m, AlertMessage) for m in messages),
        rows_skipped=sum(files.skipped.values()) - skipped_before,
    )
    logger.info("%s: %d windows, %d utterances, %d alert changes in %.1f s of audio",
                source.path, result.windows, result.utterances, result.alerts,
                result.duration_s)
    return result


def _rows_of(
    events: Sequence[Event], labels: Sequence[str], alerts: AlertRules | None
) -> list[Message]:
    """The timeline messages of one file's events, in publishing order (pure but for the
    rules' own state): each window, then the alerts it caused; utterances; a stream's close
    ends its active alerts."""
    messages: list[Message] = []
    for event in events:
        if isinstance(event, WindowLabel):
            messages.append(window_message(event, labels))
        elif isinstance(event, Utterance):
            messages.append(utterance_message(event, labels))
        if alerts is not None and isinstance(event, (WindowLabel, StreamClosed)):
            messages.extend(alerts(event))
    return messages
