"""Audio in, emotion events out: sources, VAD, windows, models, inference, smoothing, training.

Names are exported lazily (PEP 562): ``import streamer`` loads neither torch nor sounddevice;
touching ``streamer.load_model`` imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AudioError": "streamer.errors",
    "DataError": "streamer.errors",
    "ModelError": "streamer.errors",
    "StreamerError": "streamer.errors",
    "MODEL_RATE_HZ": "streamer.audio",
    "read_audio": "streamer.audio",
    "BUNDLED_MODEL_DIR": "streamer.models.loading",
    "EmotionModel": "streamer.models.loading",
    "load_model": "streamer.models.loading",
    "EngineStats": "streamer.events",
    "Event": "streamer.events",
    "SpeechEnd": "streamer.events",
    "SpeechStart": "streamer.events",
    "StreamClosed": "streamer.events",
    "StreamOpened": "streamer.events",
    "WindowLabel": "streamer.events",
    "Utterance": "streamer.events",
    "Engine": "streamer.engine",
    "EngineConfig": "streamer.engine",
    "StreamFeed": "streamer.engine",
    "ClassifierModel": "streamer.engine",
    "CaptureCounters": "streamer.engine",
    "VadConfig": "streamer.vad",
    "VadGate": "streamer.vad",
    "SampleRing": "streamer.ring",
    "Windower": "streamer.windows",
    "SpeechWindow": "streamer.windows",
    "Smoother": "streamer.smoothing",
    "SmoothingConfig": "streamer.smoothing",
    "UNCERTAIN": "streamer.smoothing",
    "FileSource": "streamer.sources",
    "MicrophoneSource": "streamer.capture",
    "InputDevice": "streamer.capture",
    "list_input_devices": "streamer.capture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
