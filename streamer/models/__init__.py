"""Speech-emotion models: one loading entry that picks and builds a runner (torch or ONNX).

Names are exported lazily (PEP 562): importing the package loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
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
    "CompactEmotionConfig": "streamer.models.compact",
    "CompactEmotionForAudioClassification": "streamer.models.compact",
    "CompactEmotionPreTrainedModel": "streamer.models.compact",
    "register_compact": "streamer.models.compact",
    "DEFAULT_CACHE_FRAMES": "streamer.models.encoder_cache",
    "Encode": "streamer.models.encoder_cache",
    "EncoderGeometry": "streamer.models.encoder_cache",
    "FrameCache": "streamer.models.encoder_cache",
    "cache_exact_reason": "streamer.models.encoder_cache",
    "encoder_geometry": "streamer.models.encoder_cache",
    "FEATURE_NORMS": "streamer.models.features",
    "LOG_MEL_INPUT": "streamer.models.features",
    "LogMelFeatures": "streamer.models.features",
    "SparseFilterbank": "streamer.models.features",
    "WAVEFORM_INPUT": "streamer.models.features",
    "WaveformFeatures": "streamer.models.features",
    "hann_window": "streamer.models.features",
    "log_mel": "streamer.models.features",
    "mel_filterbank": "streamer.models.features",
    "BUNDLED_MODEL_DIR": "streamer.models.loading",
    "BUNDLED_MODEL_NAME": "streamer.models.loading",
    "load_model": "streamer.models.loading",
    "narrowband_ok": "streamer.models.loading",
    "quiet_progress": "streamer.models.loading",
    "resolve_device": "streamer.models.loading",
    "CACHE_APP_NAME": "streamer.models.model_cache",
    "EXPORT_FORMAT": "streamer.models.model_cache",
    "EXPORT_PACKAGES": "streamer.models.model_cache",
    "checkpoint_key": "streamer.models.model_cache",
    "default_cache_dir": "streamer.models.model_cache",
    "first_use_folder": "streamer.models.model_cache",
    "DISABLED_OPTIMIZERS": "streamer.models.onnx_runner",
    "OnnxFiles": "streamer.models.onnx_runner",
    "OnnxRunner": "streamer.models.onnx_runner",
    "onnx_session": "streamer.models.onnx_runner",
    "ClassifierModel": "streamer.models.protocol",
    "SingleWorkerCpuModel": "streamer.models.protocol",
    "RayInferenceConfig": "streamer.models.ray_model",
    "RayServeModel": "streamer.models.ray_model",
    "RemoteCallCounters": "streamer.models.ray_model",
    "RemoteInferenceError": "streamer.models.ray_model",
    "call_with_retries": "streamer.models.ray_model",
    "connect_ray_model": "streamer.models.ray_model",
    "ray_address": "streamer.models.ray_model",
    "DEFAULT_TIER_APP": "streamer.models.ray_tier",
    "MAX_TIER_WINDOW_SAMPLES": "streamer.models.ray_tier",
    "EmotionReplica": "streamer.models.ray_tier",
    "RayTierConfig": "streamer.models.ray_tier",
    "TierModelInfo": "streamer.models.ray_tier",
    "check_tier_request": "streamer.models.ray_tier",
    "delete_tier": "streamer.models.ray_tier",
    "deploy_tier": "streamer.models.ray_tier",
    "predict_merged": "streamer.models.ray_tier",
    "MAX_CPU_WORKERS": "streamer.models.runner",
    "Runner": "streamer.models.runner",
    "check_windows": "streamer.models.runner",
    "workers_for": "streamer.models.runner",
    "BACKENDS": "streamer.models.settings",
    "COMPACT_MODEL_TYPE": "streamer.models.settings",
    "CUDA_BATCH": "streamer.models.settings",
    "MANIFEST_NAME": "streamer.models.settings",
    "MAX_REL_LOGIT_DIFF": "streamer.models.settings",
    "MIN_BATCH_GAIN": "streamer.models.settings",
    "MIN_TOP1_AGREEMENT": "streamer.models.settings",
    "ONNX_PRECISIONS": "streamer.models.settings",
    "PRECISIONS": "streamer.models.settings",
    "Choice": "streamer.models.settings",
    "check_choice": "streamer.models.settings",
    "choose_setting": "streamer.models.settings",
    "preferred_batch": "streamer.models.settings",
    "read_manifest": "streamer.models.settings",
    "within_bounds": "streamer.models.settings",
    "TORCH_PRECISIONS": "streamer.models.torch_runner",
    "TorchRunner": "streamer.models.torch_runner",
    "prepare_module": "streamer.models.torch_runner",
    "splittable": "streamer.models.torch_runner",
    "wav2vec2_head": "streamer.models.torch_runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
