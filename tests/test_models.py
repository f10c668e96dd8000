"""load_model and the runners: the bundled model (ONNX by default, torch on request), any HF
checkpoint, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_LABELS

from streamer.errors import AudioError, ModelError
from streamer.testing import speech_like, tone


@pytest.fixture(scope="module")
def bundled():
    """The bundled model, loaded once for this module."""
    from streamer.models.loading import load_model

    return load_model(device="cpu")


def test_bundled_labels_rate_and_name(bundled) -> None:
    """The bundled model knows the four URDU emotions at 16 kHz."""
    assert bundled.name == "bundled"
    assert bundled.labels == ("Angry", "Happy", "Neutral", "Sad")
    assert bundled.sample_rate_hz == 16000
    assert bundled.device == "cpu"


def test_bundled_has_every_member_of_the_model_protocol(bundled) -> None:
    """The bundled ONNX runner answers what the engine asks: batch, workers, thread settings."""
    assert (bundled.backend, bundled.precision) == ("onnx", "fp32")
    assert bundled.preferred_batch == 1
    # the fused graph runs a whole window without the GIL: one worker per CPU, as wav2vec2
    assert (bundled.worker_count(1), bundled.worker_count(8)) == (1, 8)
    bundled.set_worker_threads(1)
    assert bundled.narrowband_ok in (True, False) and bundled.temperature > 0


def test_bundled_predict_proba_shape_and_sum(bundled) -> None:
    """A batch of windows gives one probability row per window, each summing to 1."""
    windows = np.stack([speech_like(2.0, seed=i) for i in range(3)] + [tone(300, 2.0)])
    probs = bundled.predict_proba(windows)
    assert probs.shape == (4, 4)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs >= 0)


def test_bundled_is_small_onnx_and_safetensors() -> None:
    """The bundled folder holds the ONNX graph, its manifest and the training checkpoint
    (safetensors), a few MB in all."""
    from streamer.models.loading import BUNDLED_MODEL_DIR

    for name in ("model.onnx", "optimize.json", "model.safetensors", "config.json",
                 "preprocessor_config.json"):
        assert (BUNDLED_MODEL_DIR / name).is_file(), name
    assert sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir()) < 5_000_000


def test_silence_and_short_windows_are_finite(bundled) -> None:
    """Silence and a very short window still give finite probabilities."""
    probs = bundled.predict_proba(np.zeros((2, 200), dtype=np.float32))
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    """Saving the bundled torch model and loading the copy gives the same labels and outputs."""
    from streamer.models.loading import load_model

    bundled = load_model(device="cpu", backend="torch")
    assert (bundled.backend, bundled.precision) == ("torch", "fp32")
    bundled.model.save_pretrained(tmp_path)
    bundled.feature_extractor.save_pretrained(tmp_path)
    copy = load_model(tmp_path, device="cpu")
    assert copy.backend == "torch"  # a plain checkpoint: no optimize.json
    assert copy.labels == bundled.labels
    assert copy.name == str(tmp_path)
    windows = np.stack([speech_like(1.5, seed=7), tone(220, 1.5)])
    np.testing.assert_allclose(
        copy.predict_proba(windows), bundled.predict_proba(windows), atol=1e-6
    )


def test_loads_offline_in_a_fresh_process() -> None:
    """With HF_HUB_OFFLINE=1 and no cache, a fresh interpreter loads the bundled model."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    code = (
        "import numpy as np; from streamer.models.loading import load_model; m = load_model(); "
        "p = m.predict_proba(np.zeros((1, 32000), np.float32)); print(m.labels, p.shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "('Angry', 'Happy', 'Neutral', 'Sad') (1, 4)" in done.stdout


def test_tiny_wav2vec2_loads_through_the_same_path(tiny_wav2vec2: Path) -> None:
    """A random tiny wav2vec2 classifier folder loads and predicts like the bundled model."""
    from streamer.models.loading import load_model

    model = load_model(tiny_wav2vec2, device="auto")
    assert model.labels == TINY_LABELS
    assert model.device == "cpu"  # CI has no GPU
    probs = model.predict_proba(np.stack([speech_like(1.0, seed=1), speech_like(1.0, seed=2)]))
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (np.zeros(16000, dtype=np.float32), r"shape \(batch, samples\)"),
        (np.zeros((1, 1, 16000), dtype=np.float32), r"shape \(batch, samples\)"),
        (np.zeros((1, 16000), dtype=np.float64), "float32"),
        (np.zeros((1, 16000), dtype=np.int16), "float32"),
        (np.zeros((0, 16000), dtype=np.float32), "empty"),
        (np.zeros((1, 0), dtype=np.float32), "empty"),
    ],
)
def test_bad_windows_raise_audio_error(bundled, windows: np.ndarray, message: str) -> None:
    """Wrong rank, dtype or an empty batch raise a one-line AudioError."""
    with pytest.raises(AudioError, match=message) as info:
        bundled.predict_proba(windows)
    assert "\n" not in str(info.value)


def test_not_an_audio_classifier(tmp_path: Path) -> None:
    """A text model checkpoint is refused with a ModelError naming the model type."""
    from transformers import BertConfig, BertModel

    from streamer.models.loading import load_model

    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not an audio classifier.*bert"):
        load_model(tmp_path)


def test_missing_folder_and_folder_without_config(tmp_path: Path) -> None:
    """A missing path or a folder without config.json is a ModelError, not a hub lookup."""
    from streamer.models.loading import load_model

    with pytest.raises(ModelError, match="no such model folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)


def test_uncached_hub_id_fails_fast_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Offline, a hub id that is not cached fails with a message naming it and a local folder."""
    from streamer.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ModelError, match="Talha/urdu-audio-emotions.*local folder"):
        load_model("Talha/urdu-audio-emotions")


def test_unknown_device_is_refused() -> None:
    """An unknown device string is a ModelError listing the allowed ones."""
    from streamer.models.loading import load_model

    with pytest.raises(ModelError, match="unknown device"):
        load_model(device="tpu")


def test_the_name_bundled_loads_the_bundled_model(
    bundled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"bundled"``, the name logs and hello show, loads it; ``./bundled`` is a folder path."""
    from streamer.models.loading import BUNDLED_MODEL_NAME, load_model

    named = load_model(BUNDLED_MODEL_NAME, device="cpu")
    assert (named.name, named.labels, named.backend) == (bundled.name, bundled.labels, "onnx")
    assert BUNDLED_MODEL_NAME == bundled.name == "bundled"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundled").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model("./bundled", device="cpu")
