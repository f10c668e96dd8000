"""Shared fixtures: paths, the scalable timeout, real tiny checkpoints, generated audio."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# One scalable timeout for every wait in the tests (seconds); raise it on a slow machine.
TIMEOUT_S = float(os.environ.get("EMOTION_MONITOR_TEST_TIMEOUT_S", "30"))

REPO = Path(__file__).resolve().parent.parent
URDU_DIR = Path(os.environ.get("EMOTION_MONITOR_URDU", REPO.parent / "shared" / "data" / "urdu"))
TINY_LABELS = ("Angry", "Happy", "Neutral", "Sad")


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG_CACHE_HOME in a temp folder: first-use optimisation never writes the user's cache."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


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


