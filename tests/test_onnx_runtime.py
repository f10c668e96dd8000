"""The runtime without torch: numpy feature extraction against transformers and torch, the
log-mel front end as ONNX nodes against numpy, the bundled ONNX graph against the torch
checkpoint and against the numpy front end + CNN graph of older folders, and fresh processes
that never import torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TIMEOUT_S, save_tiny_compact
from numpy.typing import NDArray

from streamer.audio import read_audio
from streamer.errors import ModelError
from streamer.models.features import LogMelFeatures, WaveformFeatures, mel_filterbank
from streamer.models.loading import BUNDLED_MODEL_DIR, load_model
from streamer.models.onnx_runner import OnnxRunner
from streamer.models.settings import MANIFEST_NAME
from streamer.models.torch_runner import TorchRunner
from streamer.testing import speech_like, tone

WINDOW = 32000
# what the bundled ONNX graph must keep of the torch checkpoint's logits
MAX_REL_LOGIT_DIFF = 1e-4
# the ONNX front end (float32) against numpy's float64 one, on normalised features of size 1
# to 10: float32 rounding of the DFT sums (20 + 20 terms for n_fft 400), amplified in quiet
# frames by the log and by the division by the band's standard deviation: measured up to
# 3e-5; the numpy front end against torch's float32 one is held to the same bound. A prime
# n_fft has one DFT of n_fft terms: up to 1.5e-4 in 3 of 213k features measured (torch's own
# float32 front end was 9e-5 from numpy in that setting)
FEATURE_ATOL = 1e-4
PRIME_FEATURE_ATOL = 3e-4
# probabilities of the fused bundled graph against the numpy front end + the same CNN graph:
# measured up to 3e-7 on speech-like windows and URDU clips
MAX_PROBABILITY_DIFF = 1e-5


def _windows() -> NDArray[np.float32]:
    """Speech-like windows, a tone and noise. Not digital silence: per-band normalisation of a
    constant log-mel divides torch's float32 rounding noise by 1e-5, so torch's own features
    are noise there (numpy's are exactly flat, test_log_mel_of_silence_is_finite_and_flat)."""
    rng = np.random.default_rng(3)
    rows = [speech_like(2.0, seed=i, pitch_hz=110.0 + 30 * i) for i in range(6)]
    rows += [tone(250, 2.0), (0.3 * rng.standard_normal(WINDOW)).astype(np.float32)]
    return np.stack(rows).astype(np.float32)


def _relative(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _torch_free(code: str, *, installed: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter on a machine that shows no GPU and check that torch
    and transformers never got imported. ``installed`` False makes them unimportable first
    (``None`` in sys.modules: an install without the extra); True leaves them importable."""
    block = "" if installed else "sys.modules['torch'] = sys.modules['transformers'] = None\n"
    check = ("\nassert all(sys.modules.get(name) is None for name in ('torch', 'transformers'))"
             "\nprint('no torch')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", "import sys\n" + block + code + check],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S * 4,
                          cwd=REPO)


# -- the numpy front ends ---------------------------------------------------------------------


@pytest.mark.parametrize("do_normalize", [True, False])
def test_waveform_features_equal_transformers(do_normalize: bool) -> None:
    """Per-window normalisation is transformers' Wav2Vec2FeatureExtractor, bit for bit."""
    from transformers import Wav2Vec2FeatureExtractor

    reference = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=do_normalize, return_attention_mask=True)
    ours = WaveformFeatures(do_normalize=do_normalize)
    windows = _windows()
    for batch in (windows, windows[:1, :12345]):
        want = reference(batch, sampling_rate=16000, return_tensors="np")["input_values"]
        got = ours(batch, sampling_rate=16000, return_tensors="np")["input_values"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_waveform_features_read_the_preprocessor_config() -> None:
    """do_normalize defaults to true as in transformers; a non-boolean is refused."""
    assert WaveformFeatures.from_preprocessor({}).do_normalize is True
    assert WaveformFeatures.from_preprocessor({"do_normalize": False}).do_normalize is False
    with pytest.raises(ModelError, match="do_normalize"):
        WaveformFeatures.from_preprocessor({"do_normalize": "yes"})


@pytest.mark.parametrize("feature_norm", ["band", "global", "none"])
@pytest.mark.parametrize("samples", [WINDOW, 12345, 401, 200])
def test_log_mel_matches_the_torch_front_end(feature_norm: str, samples: int,
                                             tmp_path: Path) -> None:
    """The numpy log-mel equals compact.py's torch log_mel to about 1e-5 on speech-like audio,
    tones, noise and windows shorter than one FFT."""
    import torch

    folder = save_tiny_compact(tmp_path / "m", feature_norm=feature_norm)
    model = load_model(folder, backend="torch", precision="fp32")
    config = json.loads((folder / "config.json").read_text())
    ours = LogMelFeatures.from_config(config)
    windows = np.ascontiguousarray(_windows()[:, :samples])
    with torch.no_grad():
        want = model.model.log_mel(torch.from_numpy(windows)).numpy()
    got = ours(windows, sampling_rate=16000)["log_mel"]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - want).mean() < 1e-5


def test_log_mel_of_silence_is_finite_and_flat() -> None:
    """Digital silence gives the log floor: flat, finite features in every norm (torch's
    float32 mean leaves rounding noise there for "global"; numpy's is exact)."""
    base = json.loads((BUNDLED_MODEL_DIR / "config.json").read_text())
    for norm in ("band", "global", "none"):
        feats = LogMelFeatures.from_config({**base, "feature_norm": norm})(
            np.zeros((1, WINDOW), np.float32))["log_mel"]
        assert np.all(np.isfinite(feats)) and np.ptp(feats) == 0.0


def test_the_sparse_filterbank_is_the_dense_one() -> None:
    """Gather-and-sum band energies equal the dense filterbank product, empty bands included."""
    from streamer.models.features import SparseFilterbank

    dense = mel_filterbank(sample_rate_hz=16000, n_fft=400, n_mels=128, f_min_hz=0.0,
                           f_max_hz=8000.0)
    sparse = SparseFilterbank.from_dense(dense)
    power = np.random.default_rng(0).random((2, 5, dense.shape[0]))
    np.testing.assert_allclose(sparse.apply(power), power @ dense.astype(np.float64),
                               rtol=1e-12, atol=1e-12)
    holes = dense.copy()
    holes[:, [0, 5, 127]] = 0.0  # bands without a weight, at the start, inside and at the end
    np.testing.assert_allclose(SparseFilterbank.from_dense(holes).apply(power),
                               power @ holes.astype(np.float64), rtol=1e-12, atol=1e-12)


def test_log_mel_settings_are_checked() -> None:
    """A bad feature norm or hop in the config is a ModelError naming it."""
    with pytest.raises(ModelError, match="feature_norm"):
        LogMelFeatures.from_config({"feature_norm": "utterance"})
    with pytest.raises(ModelError, match="hop_length 0"):
        LogMelFeatures.from_config({"hop_length": 0})


# -- the front end as ONNX nodes ---------------------------------------------------------------


def _run_graph(model: object, feed: dict[str, NDArray[np.float32]]) -> NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),  # type: ignore[attr-defined]
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


@pytest.mark.parametrize("feature_norm", ["band", "global", "none"])
@pytest.mark.parametrize("settings", [
    {},  # the bundled model's: n_fft 400 = 20 x 20, hop 160 (blocks of 80 samples)
    {"win_length": 320, "f_min_hz": 50.0, "f_max_hz": 4000.0, "n_mels": 40},
    {"n_fft": 512, "win_length": 400, "hop_length": 128},  # 16 x 32
    {"n_fft": 401, "win_length": 400, "hop_length": 77},  # prime: one DFT matrix, blocks of 1
], ids=["bundled", "narrow-band", "512", "prime"])
def test_onnx_front_end_matches_numpy(feature_norm: str, settings: dict[str, float]) -> None:
    """The front end's ONNX nodes give numpy's log-mel for each norm, window, FFT size and hop,
    windows shorter than one FFT included, and digital silence as flat as numpy's."""
    from streamer.offline.onnx_frontend import log_mel_graph

    config = {**json.loads((BUNDLED_MODEL_DIR / "config.json").read_text()), **settings,
              "feature_norm": feature_norm}
    ours = LogMelFeatures.from_config(config)
    graph = log_mel_graph(
        window=ours.window, hop_length=ours.hop_length, feature_norm=feature_norm,
        filterbank=mel_filterbank(sample_rate_hz=16000, n_fft=ours.n_fft, n_mels=ours.n_mels,
                                  f_min_hz=ours.f_min_hz, f_max_hz=ours.f_max_hz))
    atol = PRIME_FEATURE_ATOL if ours.n_fft == 401 else FEATURE_ATOL
    for samples in (WINDOW, 12345, ours.n_fft + 1, 200):
        windows = np.ascontiguousarray(_windows()[:, :samples])
        got = _run_graph(graph, {"input_values": windows})
        want = ours(windows)["log_mel"]
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
        assert np.abs(got - want).mean() < 1e-5
    silence = _run_graph(graph, {"input_values": np.zeros((1, WINDOW), np.float32)})
    assert np.all(np.isfinite(silence)) and np.ptp(silence) == 0.0
    np.testing.assert_allclose(silence, ours(np.zeros((1, WINDOW), np.float32))["log_mel"],
                               atol=FEATURE_ATOL, rtol=0)


def test_onnx_front_end_settings_are_checked() -> None:
    """A bad norm or a filterbank of the wrong size is a ModelError naming it."""
    from streamer.offline.onnx_frontend import log_mel_graph

    window, fb = np.hanning(400), np.ones((201, 8))
    with pytest.raises(ModelError, match="feature_norm"):
        log_mel_graph(window=window, filterbank=fb, hop_length=160, feature_norm="utterance")
    with pytest.raises(ModelError, match=r"filterbank \(200, 8\)"):
        log_mel_graph(window=window, filterbank=fb[:200], hop_length=160, feature_norm="band")


def _old_log_mel_folder(folder: Path) -> Path:
    """The bundled model as optimize wrote it before the front end was fused: the CNN graph
    from log_mel (cut out of the fused graph: the same nodes and weights) and a manifest
    saying so."""
    import onnx
    from onnx.utils import Extractor

    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(BUNDLED_MODEL_DIR / name, folder / name)
    fused = onnx.load(str(BUNDLED_MODEL_DIR / "model.onnx"))
    onnx.save(Extractor(fused).extract_model(["log_mel"], ["output"]), str(folder / "model.onnx"))
    manifest = json.loads((BUNDLED_MODEL_DIR / MANIFEST_NAME).read_text())
    manifest.update(model_input="log_mel", source=str(BUNDLED_MODEL_DIR))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_an_old_log_mel_folder_loads_and_agrees_with_the_fused_graph(
    bundled_pair: tuple[OnnxRunner, TorchRunner], tmp_path: Path,
) -> None:
    """A compact folder whose graph takes log_mel still loads (numpy features), and its
    probabilities equal the fused bundled graph's on speech-like audio, short windows and
    silence; the fused one takes raw samples and computes no features in numpy."""
    fused, _ = bundled_pair
    old = load_model(_old_log_mel_folder(tmp_path / "old"), backend="onnx")
    assert isinstance(old, OnnxRunner) and isinstance(old.feature_extractor, LogMelFeatures)
    assert isinstance(fused.feature_extractor, WaveformFeatures)
    assert not fused.feature_extractor.do_normalize
    assert (old.labels, old.temperature, old.narrowband_ok) == (
        fused.labels, fused.temperature, fused.narrowband_ok)
    # the numpy front end holds the GIL between calls: one worker there, one per CPU fused
    assert (old.worker_count(2), fused.worker_count(2)) == (1, 2)
    for windows in (_windows(), _windows()[:, :12000], _windows()[:2, :300],
                    np.zeros((1, WINDOW), np.float32)):
        np.testing.assert_allclose(fused.predict_proba(windows), old.predict_proba(windows),
                                   atol=MAX_PROBABILITY_DIFF, rtol=0)


# -- the bundled graph against the torch checkpoint --------------------------------------------


@pytest.fixture(scope="module")
def bundled_pair() -> tuple[OnnxRunner, TorchRunner]:
    """The bundled model on ONNX Runtime (the default) and on torch (its checkpoint)."""
    onnx = load_model(device="cpu")
    reference = load_model(device="cpu", backend="torch", precision="fp32")
    assert isinstance(onnx, OnnxRunner) and isinstance(reference, TorchRunner)
    return onnx, reference


def test_bundled_onnx_agrees_with_torch_on_speech_like_audio(
    bundled_pair: tuple[OnnxRunner, TorchRunner],
) -> None:
    """Same top-1 label on every window and logits within 1e-4 relative, short windows too;
    digital silence gives finite probabilities."""
    onnx, reference = bundled_pair
    silence = onnx.predict_proba(np.zeros((2, WINDOW), np.float32))
    assert np.all(np.isfinite(silence)) and np.allclose(silence.sum(axis=1), 1.0)
    for windows in (_windows(), _windows()[:, :12000], _windows()[:2, :300]):
        got, want = onnx.logits(windows), reference.logits(windows)
        assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
        assert _relative(got, want) < MAX_REL_LOGIT_DIFF
        np.testing.assert_allclose(onnx.predict_proba(windows),
                                   reference.predict_proba(windows), atol=1e-5)


def test_bundled_onnx_agrees_with_torch_on_urdu_clips(
    bundled_pair: tuple[OnnxRunner, TorchRunner], urdu_dir: Path,
) -> None:
    """On real URDU speech (the first 2 s of five clips per emotion): same top-1, logits
    within 1e-4 relative."""
    onnx, reference = bundled_pair
    rows = []
    for label in onnx.labels:
        for clip in sorted((urdu_dir / label).glob("*.wav"))[:5]:
            audio = read_audio(clip)[:WINDOW]
            rows.append(np.pad(audio, (0, WINDOW - audio.size)))
    assert rows, f"no clips under {urdu_dir}"
    windows = np.stack(rows).astype(np.float32)
    got, want = onnx.logits(windows), reference.logits(windows)
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert _relative(got, want) < MAX_REL_LOGIT_DIFF


def test_bundled_manifest_is_an_in_place_optimize_output() -> None:
    """optimize.json names the folder itself as source, input_values as the graph input (the
    front end is in the graph), and the ONNX fp32 setting within bounds (so auto takes it)."""
    manifest = json.loads((BUNDLED_MODEL_DIR / MANIFEST_NAME).read_text())
    assert manifest["source"] == "." and manifest["model_input"] == "input_values"
    assert manifest["files"]["fp32"] == "model.onnx"
    check = manifest["checks"]["onnx/fp32"]
    assert check["top1_agreement"] == 1.0 and check["rel_logit_diff"] < MAX_REL_LOGIT_DIFF


def test_optimize_in_place_writes_beside_the_checkpoint(tmp_path: Path) -> None:
    """optimize --out = --model adds the graph and a manifest with source "." and keeps the
    configs; the folder then loads on ONNX by default and on torch on request."""
    from streamer.offline.optimize import optimize_model

    folder = save_tiny_compact(tmp_path / "m")
    config = (folder / "config.json").read_bytes()
    optimize_model(folder, folder, max_windows=4, repeats=1)
    assert (folder / "config.json").read_bytes() == config
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["source"] == "." and manifest["model_input"] == "input_values"
    assert load_model(folder).backend == "onnx"
    assert load_model(folder, backend="torch").backend == "torch"
    optimize_model(folder, folder, max_windows=4, repeats=1)  # again, in place
    optimize_model(folder, tmp_path / "copy", max_windows=4, repeats=1)  # still a checkpoint
    with pytest.raises(ModelError, match="already an optimize output"):
        optimize_model(tmp_path / "copy", tmp_path / "again", max_windows=4, repeats=1)


# -- no torch in the process -------------------------------------------------------------------


@pytest.mark.parametrize("installed", [True, False], ids=["torch-installed", "no-torch"])
def test_bundled_model_loads_and_predicts_without_torch(installed: bool) -> None:
    """A fresh process loads the bundled model with every default and predicts without ever
    importing torch or transformers, whether they are installed or not."""
    done = _torch_free(
        "import numpy as np\n"
        "from streamer.models.loading import load_model\n"
        "m = load_model()\n"
        "p = m.predict_proba(np.zeros((2, 32000), np.float32))\n"
        "print(m.backend, m.precision, m.labels, p.shape)\n", installed=installed,
    )
    assert done.returncode == 0, done.stderr
    assert "onnx fp32 ('Angry', 'Happy', 'Neutral', 'Sad') (2, 4)" in done.stdout
    assert "no torch" in done.stdout


def test_an_optimize_folder_loads_without_torch(tiny_wav2vec2: Path, tmp_path: Path) -> None:
    """A wav2vec2 optimize folder (per-window normalisation in numpy) loads with auto in a
    process without torch, and its probabilities equal those of this process's ONNX runner."""
    from streamer.offline.optimize import optimize_model

    out = tmp_path / "onnx"
    optimize_model(tiny_wav2vec2, out, max_windows=8, repeats=1)
    windows = _windows()[:3]
    np.save(tmp_path / "w.npy", windows)
    done = _torch_free(
        "import numpy as np\n"
        "from streamer.models.loading import load_model\n"
        f"m = load_model({str(out)!r})\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, m.predict_proba(np.load("
        f"{str(tmp_path / 'w.npy')!r})))\n"
        "print(m.backend)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "onnx"
    here = load_model(out)
    assert isinstance(here, OnnxRunner)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), here.predict_proba(windows),
                               atol=1e-6)


def test_cuda_without_torch_names_the_extra() -> None:
    """Asking for a CUDA device without torch is one MissingExtraError naming the extra."""
    done = _torch_free(
        "from streamer.extras import MissingExtraError\n"
        "from streamer.models.loading import load_model\n"
        "try:\n"
        "    load_model(device='cuda')\n"
        "except MissingExtraError as exc:\n"
        "    print('MissingExtraError:', exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "needs torch, which is not installed" in done.stdout
    assert "emotion-monitor[torch]" in done.stdout
