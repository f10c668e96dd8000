"""Shared fixtures: paths, the scalable timeout, real tiny checkpoints, generated audio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

# One scalable timeout for every wait in the tests (seconds); raise it on a slow machine.
TIMEOUT_S = float(os.environ.get("EMOTION_MONITOR_TEST_TIMEOUT_S", "30"))

REPO = Path(__file__).resolve().parent.parent
URDU_DIR = Path(os.environ.get("EMOTION_MONITOR_URDU", REPO.parent / "shared" / "data" / "urdu"))
TINY_LABELS = ("Angry", "Happy", "Neutral", "Sad")


@pytest.fixture(scope="session")
def urdu_dir() -> Path:
    """The URDU dataset folder; tests that need it skip, saying where it was looked for."""
    if not (URDU_DIR / "Angry").is_dir():
        pytest.skip(f"URDU dataset not found at {URDU_DIR} (set EMOTION_MONITOR_URDU)")
    return URDU_DIR


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny wav2vec2 audio classifier saved as a real checkpoint folder."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = Wav2Vec2ForSequenceClassification(config).eval()
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=False,
    )
    out = tmp_path_factory.mktemp("tiny-wav2vec2")
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


def save_tiny_compact(folder: Path, *, seed: int = 0, **fields: object) -> Path:
    """A tiny random compact model saved as a checkpoint (extra config.json fields as given)."""
    import torch

    from streamer.models.compact import CompactEmotionConfig, CompactEmotionForAudioClassification
    from streamer.offline.training import compact_feature_extractor

    torch.manual_seed(seed)
    config = CompactEmotionConfig(
        n_mels=16, hidden_size=16, num_blocks=1, freq_mask_bands=0, time_mask_frames=0,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
        **fields,
    )
    CompactEmotionForAudioClassification(config).eval().save_pretrained(folder)
    compact_feature_extractor().save_pretrained(folder)
    return folder


def tone(
    freq_hz: float, seconds: float, *, rate_hz: int = 16000, amplitude: float = 0.3
) -> NDArray[np.float32]:
    """A sine tone as float32 mono."""
    t = np.arange(int(seconds * rate_hz), dtype=np.float64) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def speech_like(
    seconds: float, *, rate_hz: int = 16000, seed: int = 0, pitch_hz: float = 140.0
) -> NDArray[np.float32]:
    """Voiced, syllable-modulated harmonic audio that webrtcvad reliably calls speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    t = np.arange(n, dtype=np.float64) / rate_hz
    f0 = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    noise = 0.02 * rng.standard_normal(n)
    signal = 0.25 * voiced * syllables + noise
    return (signal / np.max(np.abs(signal)) * 0.5).astype(np.float32)
