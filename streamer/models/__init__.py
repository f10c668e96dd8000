"""Speech-emotion models: one loading entry that picks and builds a runner (torch or ONNX).

Names are exported lazily (PEP 562): importing the package loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "BUNDLED_MODEL_DIR": "streamer.models.loading",
    "EmotionModel": "streamer.models.loading",
    "load_model": "streamer.models.loading",
    "narrowband_ok": "streamer.models.loading",
    "resolve_device": "streamer.models.loading",
    "ECE_BINS": "streamer.models.calibration",
    "TEMPERATURE_KEY": "streamer.models.calibration",
    "ReliabilityBin": "streamer.models.calibration",
    "config_temperature": "streamer.models.calibration",
    "expected_calibration_error": "streamer.models.calibration",
    "fit_temperature": "streamer.models.calibration",
    "nll": "streamer.models.calibration",
    "reliability_table": "streamer.models.calibration",
    "set_temperature": "streamer.models.calibration",
    "softmax": "streamer.models.calibration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
