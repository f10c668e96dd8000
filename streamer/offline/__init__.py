"""Offline tooling: datasets, training, evaluation, cross-validation, ONNX export, their commands.

The runtime (capture, engine, models, server) never imports this package. Names are exported
lazily (PEP 562): importing the package loads neither torch nor the datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "register": "streamer.offline.commands",
    "CrossvalResult": "streamer.offline.crossval",
    "FoldResult": "streamer.offline.crossval",
    "SideScores": "streamer.offline.crossval",
    "corpus_folds": "streamer.offline.crossval",
    "group_folds": "streamer.offline.crossval",
    "reference_split": "streamer.offline.crossval",
    "run_crossval": "streamer.offline.crossval",
    "speaker_majority": "streamer.offline.crossval",
    "stratified_folds": "streamer.offline.crossval",
    "AUDIO_SUFFIXES": "streamer.offline.dataset",
    "CANONICAL_LABELS": "streamer.offline.dataset",
    "DEFAULT_GROUP_REGEX": "streamer.offline.dataset",
    "KNOWN_SPEAKER_REGEX": "streamer.offline.dataset",
    "LABEL_ALIASES": "streamer.offline.dataset",
    "Clip": "streamer.offline.dataset",
    "CorpusSpec": "streamer.offline.dataset",
    "Dataset": "streamer.offline.dataset",
    "canonical_label": "streamer.offline.dataset",
    "group_ids": "streamer.offline.dataset",
    "is_corpus_folder": "streamer.offline.dataset",
    "load_corpora": "streamer.offline.dataset",
    "load_dataset": "streamer.offline.dataset",
    "resolve_corpora": "streamer.offline.dataset",
    "scan_dataset": "streamer.offline.dataset",
    "Evaluation": "streamer.offline.evaluation",
    "Scores": "streamer.offline.evaluation",
    "clip_windows": "streamer.offline.evaluation",
    "evaluate_model": "streamer.offline.evaluation",
    "plot_confusion": "streamer.offline.evaluation",
    "predict_clips": "streamer.offline.evaluation",
    "render_scores": "streamer.offline.evaluation",
    "score": "streamer.offline.evaluation",
    "FRONT_END_PREFIX": "streamer.offline.onnx_frontend",
    "dft_factors": "streamer.offline.onnx_frontend",
    "fuse_front_end": "streamer.offline.onnx_frontend",
    "log_mel_graph": "streamer.offline.onnx_frontend",
    "stft_weights": "streamer.offline.onnx_frontend",
    "quantize_before_taps": "streamer.offline.onnx_rewrite",
    "quantize_grouped_convs": "streamer.offline.onnx_rewrite",
    "Agreement": "streamer.offline.optimize",
    "BATCH_SIZES": "streamer.offline.optimize",
    "InstanceNormAffine": "streamer.offline.optimize",
    "MatmulConv1d": "streamer.offline.optimize",
    "SETTINGS": "streamer.offline.optimize",
    "agreement": "streamer.offline.optimize",
    "agreement_windows": "streamer.offline.optimize",
    "fold_weight_norm": "streamer.offline.optimize",
    "matmul_convs": "streamer.offline.optimize",
    "optimize_model": "streamer.offline.optimize",
    "prepare_for_export": "streamer.offline.optimize",
    "CompactTrainConfig": "streamer.offline.training",
    "FineTuneConfig": "streamer.offline.training",
    "compact_feature_extractor": "streamer.offline.training",
    "crop_batch": "streamer.offline.training",
    "draw_weights": "streamer.offline.training",
    "fine_tune": "streamer.offline.training",
    "save_compact": "streamer.offline.training",
    "train_compact": "streamer.offline.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
