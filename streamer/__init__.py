"""Audio in, emotion events out: sources, VAD, windows, the engine, smoothing, analysis.

Subpackages: ``streamer.protocol`` (the wire schema both ends share), ``streamer.models`` (model
loading and runners), ``streamer.offline`` (training, evaluation, export; never imported by the
runtime). Names are exported lazily (PEP 562): ``import streamer`` loads neither numpy, torch nor
sounddevice; touching ``streamer.Engine`` imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "AlertRules": "streamer.analyze",
    "AnalyzeResult": "streamer.analyze",
    "analyze_files": "streamer.analyze",
    "analyze_kinds": "streamer.analyze",
    "MODEL_RATE_HZ": "streamer.audio",
    "downmix": "streamer.audio",
    "f32le_to_float32": "streamer.audio",
    "float32_to_int16": "streamer.audio",
    "int16_to_float32": "streamer.audio",
    "s16le_to_float32": "streamer.audio",
    "read_audio": "streamer.audio",
    "resample": "streamer.audio",
    "CaptureBuffer": "streamer.capture",
    "CaptureConfig": "streamer.capture",
    "InputDevice": "streamer.capture",
    "MicrophoneSource": "streamer.capture",
    "list_input_devices": "streamer.capture",
    "resolve_input_device": "streamer.capture",
    "register": "streamer.capture_command",
    "event_message": "streamer.convert",
    "stats_message": "streamer.convert",
    "utterance_message": "streamer.convert",
    "window_message": "streamer.convert",
    "CaptureCounters": "streamer.engine",
    "Engine": "streamer.engine",
    "EngineConfig": "streamer.engine",
    "Sink": "streamer.engine",
    "StreamFeed": "streamer.engine",
    "available_cpus": "streamer.engine",
    "AudioError": "streamer.errors",
    "DataError": "streamer.errors",
    "ModelError": "streamer.errors",
    "StreamerError": "streamer.errors",
    "WIDEBAND_MODEL_ON_NARROWBAND_AUDIO": "streamer.events",
    "EngineStats": "streamer.events",
    "Event": "streamer.events",
    "SpeechEnd": "streamer.events",
    "SpeechStart": "streamer.events",
    "StreamClosed": "streamer.events",
    "StreamOpened": "streamer.events",
    "Utterance": "streamer.events",
    "WindowLabel": "streamer.events",
    "POSTGRES_EXTRA": "streamer.extras",
    "RAY_EXTRA": "streamer.extras",
    "REDIS_EXTRA": "streamer.extras",
    "TORCH_EXTRA": "streamer.extras",
    "MissingExtraError": "streamer.extras",
    "import_extra": "streamer.extras",
    "require_extra": "streamer.extras",
    "StreamOutbox": "streamer.outbox",
    "SampleRing": "streamer.ring",
    "DropCounts": "streamer.scheduler",
    "QueuedWindow": "streamer.scheduler",
    "RoundRobinWindowScheduler": "streamer.scheduler",
    "TakenWindows": "streamer.scheduler",
    "Smoothed": "streamer.smoothing",
    "Smoother": "streamer.smoothing",
    "SmoothingConfig": "streamer.smoothing",
    "FileSource": "streamer.sources",
    "G711_LAWS": "streamer.telephony",
    "Law": "streamer.telephony",
    "PHONE_RATE_HZ": "streamer.telephony",
    "alaw_decode": "streamer.telephony",
    "alaw_encode": "streamer.telephony",
    "mulaw_decode": "streamer.telephony",
    "mulaw_encode": "streamer.telephony",
    "phone_line": "streamer.telephony",
    "DEFAULT_LABELS": "streamer.testing",
    "FixedProbabilitiesModel": "streamer.testing",
    "speech_like": "streamer.testing",
    "tone": "streamer.testing",
    "GateClosed": "streamer.vad",
    "GatedAudio": "streamer.vad",
    "GateItem": "streamer.vad",
    "GateOpened": "streamer.vad",
    "VadConfig": "streamer.vad",
    "VadGate": "streamer.vad",
    "SpeechWindow": "streamer.windows",
    "Windower": "streamer.windows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
