"""Calibration: ECE and reliability on known inputs, temperature fitting, temperature in models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_compact
from numpy.typing import NDArray

from streamer.errors import ModelError
from streamer.models.calibration import (
    TEMPERATURE_KEY,
    config_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_table,
    set_temperature,
    softmax,
)
from streamer.testing import speech_like

# -- expected calibration error ---------------------------------------------------------------


def test_ece_of_two_bins_by_hand() -> None:
    """Two bins: conf 0.9 right 1 of 2 and conf 0.6 right 2 of 2 -> ECE (2*0.4 + 2*0.4) / 4."""
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    # bin (0.8667, 0.9333]: conf 0.9, acc 0.5 -> 0.4; bin (0.5333, 0.6]: conf 0.6, acc 1 -> 0.4
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    # with 2 bins both fall in (0.5, 1]: mean conf 0.75, acc 0.75 -> perfectly calibrated
    assert expected_calibration_error(probs, y, bins=2) == pytest.approx(0.0)


def test_ece_weights_bins_by_count() -> None:
    """Three predictions at 0.7 (two right) and one at 0.95 (wrong): (3*|2/3-0.7| + 0.95) / 4."""
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7], [0.95, 0.03, 0.02]])
    y = np.array([0, 1, 0, 2])
    expected = (3 * abs(2 / 3 - 0.7) + 1 * abs(0.0 - 0.95)) / 4
    assert expected_calibration_error(probs, y) == pytest.approx(expected)


def test_perfect_and_worst_cases() -> None:
    """Always right with confidence 1 -> 0; always wrong with confidence 1 -> 1."""
    probs = np.eye(4)[[0, 1, 2, 3, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 3, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 2, 3, 0, 1])) == pytest.approx(1.0)


def test_reliability_table_lists_every_bin() -> None:
    """15 equal-width bins: counts, mean confidence and accuracy; empty bins have None."""
    probs = np.array([[0.72, 0.28], [0.3, 0.7], [0.31, 0.69], [0.98, 0.02]])
    y = np.array([0, 0, 1, 0])
    table = reliability_table(probs, y)
    assert len(table) == 15
    assert table[0].lower == 0.0 and table[-1].upper == 1.0
    assert sum(b.count for b in table) == 4
    filled = {k: b for k, b in enumerate(table) if b.count}
    assert set(filled) == {10, 14}  # (0.6667, 0.7333] and (0.9333, 1]
    assert filled[10].count == 3
    assert filled[10].mean_confidence == pytest.approx((0.72 + 0.7 + 0.69) / 3)
    assert filled[10].accuracy == pytest.approx(2 / 3)
    assert filled[14].accuracy == 1.0
    assert table[3].count == 0 and table[3].accuracy is None and table[3].mean_confidence is None


@pytest.mark.parametrize(
    ("probs", "y", "bins", "words"),
    [
        (np.ones(3), np.zeros(3, int), 15, "shape"),
        (np.full((2, 2), 0.5), np.zeros(3, int), 15, "labels"),
        (np.full((2, 2), 0.5), np.array([0.0, 1.0]), 15, "integers"),
        (np.full((2, 2), 0.5), np.array([0, 2]), 15, "0..1"),
        (np.full((2, 2), 0.5), np.array([0, 1]), 0, "bins"),
    ],
)
def test_bad_inputs_name_the_problem(probs: NDArray[np.float64], y: NDArray[np.generic],
                                     bins: int, words: str) -> None:
    """Wrong shapes, float labels, out-of-range labels and zero bins raise ValueError."""
    with pytest.raises(ValueError, match=words):
        expected_calibration_error(probs, y, bins=bins)


# -- temperature ------------------------------------------------------------------------------


def _overconfident(n: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Logits whose true calibration temperature is 3: labels drawn from softmax(z), logits 3z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, 4))
    p = softmax(z)
    y = np.array([rng.choice(4, p=row) for row in p])
    return 3.0 * z, y


def test_fitted_temperature_lowers_held_out_nll_and_ece() -> None:
    """T fitted on one half of over-confident logits lowers NLL and ECE on the other half."""
    fit_logits, fit_y = _overconfident(3000, seed=1)
    test_logits, test_y = _overconfident(3000, seed=2)
    t = fit_temperature(fit_logits, fit_y)
    assert 2.5 < t < 3.5
    assert nll(test_logits, test_y, t) < nll(test_logits, test_y) - 0.1
    before = expected_calibration_error(softmax(test_logits), test_y)
    after = expected_calibration_error(softmax(test_logits, t), test_y)
    assert after < 0.03 < before
    # the label never changes
    np.testing.assert_array_equal(softmax(test_logits, t).argmax(1), test_logits.argmax(1))


def test_fit_temperature_is_the_nll_minimum() -> None:
    """The fitted T beats its neighbours, also for under-confident logits (T < 1)."""
    logits, y = _overconfident(2000, seed=3)
    logits = logits / 9.0  # now T = 1/3 is right
    t = fit_temperature(logits, y)
    assert 0.25 < t < 0.45
    assert nll(logits, y, t) <= min(nll(logits, y, t * 1.05), nll(logits, y, t / 1.05))


def test_log_probabilities_work_as_logits() -> None:
    """Fitting on log(softmax(z)) gives the same T as on z (a constant per row cancels)."""
    logits, y = _overconfident(500, seed=4)
    t = fit_temperature(logits, y)
    assert fit_temperature(np.log(softmax(logits)), y) == pytest.approx(t, rel=1e-3)


def test_nll_by_hand() -> None:
    """NLL of two rows with known probabilities is the mean of -log p(true)."""
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    assert nll(logits, np.array([0, 2])) == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2)
    with pytest.raises(ValueError, match="temperature"):
        nll(logits, np.array([0, 2]), temperature=0.0)


def test_set_temperature_rewrites_one_field(tmp_path: Path) -> None:
    """set_temperature keeps the other config fields and refuses a non-positive T."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "hidden_size": 8}))
    set_temperature(tmp_path, 1.7)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"model_type": "x", "hidden_size": 8, TEMPERATURE_KEY: 1.7}
    with pytest.raises(ValueError, match="temperature"):
        set_temperature(tmp_path, -1.0)
    with pytest.raises(ModelError, match="config.json"):
        set_temperature(tmp_path / "missing", 1.0)


def test_config_temperature_defaults_to_one() -> None:
    """A config without the field has T = 1; a bad value is a ModelError."""

    class Config:
        pass

    config = Config()
    assert config_temperature(config) == 1.0
    setattr(config, TEMPERATURE_KEY, "hot")
    with pytest.raises(ModelError, match=TEMPERATURE_KEY):
        config_temperature(config)


# -- temperature applied by the models --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_compact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random compact model without a temperature field."""
    return save_tiny_compact(tmp_path_factory.mktemp("tiny-compact"))


def _windows() -> NDArray[np.float32]:
    return np.stack([speech_like(1.0, seed=s) for s in range(3)])


def test_temperature_in_config_scales_torch_logits(tiny_compact: Path, tmp_path: Path) -> None:
    """With T = 2.5 in config.json, torch predict_proba = softmax(log p(T=1) / 2.5)."""
    import shutil

    from streamer.models.loading import load_model

    plain = load_model(tiny_compact, device="cpu")
    assert plain.temperature == 1.0
    hot = shutil.copytree(tiny_compact, tmp_path / "hot")
    set_temperature(hot, 2.5)
    model = load_model(hot, device="cpu")
    assert model.temperature == 2.5
    windows = _windows()
    base = plain.predict_proba(windows)
    expected = softmax(np.log(base.astype(np.float64)), 2.5)
    np.testing.assert_allclose(model.predict_proba(windows), expected, atol=1e-5)
    assert model.predict_proba(windows).max() < base.max()


def test_plain_wav2vec2_checkpoint_has_temperature_one(tiny_wav2vec2: Path) -> None:
    """A plain HF checkpoint (no field) loads with T = 1 and is not marked narrowband."""
    from streamer.models.loading import load_model

    model = load_model(tiny_wav2vec2, device="cpu")
    assert model.temperature == 1.0 and model.narrowband_ok is False


def test_temperature_reaches_the_onnx_backend(tiny_compact: Path, tmp_path: Path) -> None:
    """optimize keeps the field; ONNX predict_proba applies it like torch does."""
    import shutil

    from streamer.models.loading import load_model
    from streamer.models.onnx_runner import OnnxRunner
    from streamer.offline.optimize import optimize_model

    hot = shutil.copytree(tiny_compact, tmp_path / "hot")
    set_temperature(hot, 0.5)
    out = tmp_path / "onnx"
    optimize_model(hot, out, max_windows=8, repeats=1)
    assert json.loads((out / "config.json").read_text())[TEMPERATURE_KEY] == 0.5
    onnx = load_model(out, backend="onnx", precision="fp32")
    torch_model = load_model(hot, device="cpu")
    assert isinstance(onnx, OnnxRunner) and onnx.temperature == 0.5
    windows = _windows()
    np.testing.assert_allclose(onnx.predict_proba(windows), torch_model.predict_proba(windows),
                               atol=1e-4)
    cold = softmax(onnx.logits(windows))
    assert onnx.predict_proba(windows).max(axis=1).mean() > cold.max(axis=1).mean()
