"""Offline analysis of audio files into a timeline file (runs on the caller's thread).

:func:`analyze_files` drives the same :class:`~streamer.engine.Engine`, conversion
(:mod:`streamer.convert`) and row format (:mod:`streamer.protocol.timeline`) as the live server,
without a server, as fast as the model allows: ``realtime=False`` gives backpressure instead of
drops. The engine's worker threads hand events to a list; this thread waits for each file's
events (``Engine.drain``) before writing its rows, so rows come in window order per file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from streamer.convert import window_message
from streamer.engine import Engine, EngineConfig
from streamer.errors import StreamerError
from streamer.events import Event, SpeechStart, StreamClosed, WindowLabel
from streamer.models.protocol import ClassifierModel
from streamer.protocol.timeline import TimelineWriter, new_session_id, timeline_format
from streamer.sources import FileSource

__all__ = ["AnalyzeResult", "analyze_files"]

logger = logging.getLogger(__name__)




@dataclass(frozen=True, slots=True)
class AnalyzeResult:
    """What ``analyze`` did for one file."""

    path: Path
    stream: str
    duration_s: float
    windows: int
    speech_segments: int


def analyze_files(
    model: ClassifierModel,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    engine_config: EngineConfig,
    channel: int | None = None,
    session: str | None = None,
) -> list[AnalyzeResult]:
    """Run each file through the engine as fast as possible and append its windows to ``out``.

    Same engine, conversion and row format as the live server (stream name = file stem, made
    unique with ``-2``, ``-3`` ...), but ``realtime=False``: nothing is dropped. Every file is
    opened (and checked) before anything is written.
    """
    timeline_format(out)  # a bad suffix fails before any work
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
                TimelineWriter(out, model.labels) as writer:
            return [_analyze_one(engine, source, events, writer, labels=model.labels,
                                 session=session) for source in sources]
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
    writer: TimelineWriter,
    *,
    labels: Sequence[str],
    session: str,
) -> AnalyzeResult:
    """Feed one file, wait for its events, write its windows; what it produced."""
    events.clear()
    with engine.open_stream(
        source.name, sample_rate_hz=source.sample_rate_hz, metadata={"source": "FileSource"},
    ) as feed:
        for block in source.blocks():
            feed.feed(block)
    engine.drain(None)
    windows = [e for e in list(events) if isinstance(e, WindowLabel)]
    for event in windows:
        writer.write_window(window_message(event, labels), session=session)
    closed = [e for e in events if isinstance(e, StreamClosed)]
    result = AnalyzeResult(
        path=source.path,
        stream=source.name,
        duration_s=closed[-1].end_s if closed else source.duration_s,
        windows=len(windows),
        speech_segments=sum(isinstance(e, SpeechStart) for e in events),
    )
    logger.info("%s: %d windows in %.1f s of audio", source.path, result.windows,
                result.duration_s)
    return result
