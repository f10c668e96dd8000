"""Fast inference: backend choice, ONNX export round trips, agreement, frame cache, threads."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TIMEOUT_S, TINY_LABELS
from numpy.typing import NDArray

from server.cli import main
from streamer.engine import Engine, EngineConfig
from streamer.errors import ModelError
from streamer.events import Event, WindowLabel
from streamer.models.encoder_cache import FrameCache, encoder_geometry
from streamer.models.loading import load_model
from streamer.models.onnx_runner import OnnxRunner
from streamer.models.protocol import ClassifierModel, SingleWorkerCpuModel
from streamer.models.settings import MANIFEST_NAME, check_choice, choose_setting, preferred_batch
from streamer.models.torch_runner import TorchRunner
from streamer.offline.onnx_rewrite import quantize_grouped_convs
from streamer.offline.optimize import (
    MatmulConv1d,
    agreement,
    matmul_convs,
    optimize_model,
    prepare_for_export,
)
from streamer.testing import speech_like

HOP = 8000
WINDOW = 32000


@pytest.fixture(scope="session")
def tiny_layer_norm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random wav2vec2 of the large/XLSR kind (layer-norm conv encoder, conv bias),
    with a feature extractor that does not normalise each window."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(1)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=16,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    out = tmp_path_factory.mktemp("tiny-layer-norm")
    Wav2Vec2ForSequenceClassification(config).eval().save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
        return_attention_mask=False,
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def optimized_tiny(tiny_layer_norm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """optimize output of the tiny layer-norm wav2vec2 (split graphs), synthetic windows."""
    out = tmp_path_factory.mktemp("opt-tiny") / "onnx"
    optimize_model(tiny_layer_norm, out, max_windows=16, repeats=1)
    return out


@pytest.fixture(scope="session")
def optimized_bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """optimize output of the bundled model (one graph), synthetic windows."""
    out = tmp_path_factory.mktemp("opt-bundled") / "onnx"
    optimize_model(None, out, max_windows=16, repeats=1)
    return out


def _windows(seed: int, n: int = 4, length: int = WINDOW) -> NDArray[np.float32]:
    return np.stack([speech_like(length / 16000, seed=seed + i) for i in range(n)])


def _relative(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "precision", "words"),
    [("tpu", "fp32", "unknown backend 'tpu'"), ("torch", "fp64", "unknown precision 'fp64'"),
     ("onnx", "bf16", "not 'bf16'")],
)
def test_bad_backend_or_precision_is_a_clear_error(backend: str, precision: str, words: str
                                                   ) -> None:
    """Unknown values and impossible pairs name the value and the allowed ones."""
    with pytest.raises(ModelError, match=words):
        check_choice(backend, precision)
    with pytest.raises(ModelError, match=words):
        load_model(None, device="cpu", backend=backend, precision=precision)


def test_cli_rejects_a_bad_backend_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """run --backend tpu exits 2 with one line naming the choices."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--backend", "tpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'auto', 'torch', 'onnx'" in err


def test_onnx_on_a_plain_checkpoint_says_to_optimize(tmp_path: Path, tiny_wav2vec2: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """analyze --backend onnx on a checkpoint without ONNX files: one line, exit 2."""
    wav = tmp_path / "a.wav"
    sf.write(wav, speech_like(1.0), 16000)
    code = main(["analyze", str(wav), "--out", str(tmp_path / "t.csv"), "--backend", "onnx",
                 "--model", str(tiny_wav2vec2)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "emotion-monitor optimize" in err


def test_auto_on_a_plain_checkpoint_is_torch_fp32(tiny_wav2vec2: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Without optimize numbers, auto keeps fp32 torch on CPU and says so."""
    with caplog.at_level(logging.INFO, logger="streamer.models.loading"):
        model = load_model(tiny_wav2vec2, device="cpu", backend="auto", precision="auto")
    assert isinstance(model, TorchRunner)
    assert (model.backend, model.precision, model.encoder_cache) == ("torch", "fp32", None)
    assert "backend torch, precision fp32" in caplog.text


def test_auto_takes_the_fastest_setting_within_bounds() -> None:
    """A faster setting outside the agreement bounds is never chosen; explicit parts hold."""
    manifest = {"files": {}, "checks": {
        "torch/fp32": {"top1_agreement": 1.0, "rel_logit_diff": 0.0, "ms_per_window": 30.0},
        "torch/bf16": {"top1_agreement": 0.95, "rel_logit_diff": 0.02, "ms_per_window": 5.0},
        "onnx/fp32": {"top1_agreement": 1.0, "rel_logit_diff": 0.001, "ms_per_window": 20.0},
        "onnx/int8": {"top1_agreement": 0.99, "rel_logit_diff": 0.30, "ms_per_window": 4.0},
        "torch/int8": {"unavailable": "not for this model"},
    }}
    assert choose_setting("auto", "auto", "cpu", manifest).key == "onnx/fp32"
    assert choose_setting("torch", "auto", "cpu", manifest).key == "torch/fp32"
    faster_torch = {"files": {}, "checks": {**manifest["checks"], "torch/bf16": {
        "top1_agreement": 1.0, "rel_logit_diff": 0.01, "ms_per_window": 5.0}}}
    # ONNX within bounds wins over a faster torch setting: no torch in the process
    assert choose_setting("auto", "auto", "cpu", faster_torch).key == "onnx/fp32"
    no_onnx = {"files": {}, "checks": {k: v for k, v in faster_torch["checks"].items()
                                       if k.startswith("torch/")}}
    assert choose_setting("auto", "auto", "cpu", no_onnx).key == "torch/bf16"
    assert choose_setting("torch", "auto", "cpu", faster_torch).key == "torch/fp32"
    assert choose_setting("auto", "int8", "cpu", manifest).key == "onnx/int8"  # none in bounds
    assert choose_setting("torch", "bf16", "cpu", manifest).key == "torch/bf16"  # as asked
    assert choose_setting("auto", "auto", "cpu", None).key == "torch/fp32"


# -- agreement --------------------------------------------------------------------------------


def test_agreement_counts_top1_matches_and_relative_logit_difference() -> None:
    """Top-1 agreement is the share of equal arg-maxes; the difference is a norm ratio."""
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    same = agreement(ref, ref)
    assert (same.windows, same.top1_agreement, same.rel_logit_diff) == (4, 1.0, 0.0)
    flipped = ref.copy()
    flipped[0] = [0.0, 2.0]
    found = agreement(ref, flipped)
    assert found.top1_agreement == 0.75
    assert found.rel_logit_diff == pytest.approx(np.sqrt(8.0) / np.sqrt(10.0))
    with pytest.raises(ValueError, match="equal"):
        agreement(ref, ref[:2])


# -- export round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["optimized_bundled", "optimized_tiny"])
def test_onnx_export_matches_torch_and_int8_predicts(which: str,
                                                     request: pytest.FixtureRequest) -> None:
    """ONNX fp32 logits match fp32 torch; int8 loads and gives probabilities; manifest filled."""
    folder: Path = request.getfixturevalue(which)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert set(manifest["checks"]) == {
        "torch/fp32", "torch/bf16", "torch/int8", "onnx/fp32", "onnx/int8"
    }
    assert manifest["checks"]["onnx/fp32"]["rel_logit_diff"] < 1e-3
    windows = np.concatenate([_windows(7, 2), _windows(9, 1, WINDOW // 2)[:, :WINDOW // 2]
                              .repeat(2, axis=1)])
    reference = load_model(folder, backend="torch", precision="fp32")
    onnx = load_model(folder, backend="onnx", precision="fp32")
    assert isinstance(onnx, OnnxRunner) and isinstance(reference, TorchRunner)
    assert _relative(onnx.logits(windows), reference.logits(windows)) < 1e-3
    short = windows[:, :12000]  # a final window shorter than 2 s
    assert _relative(onnx.logits(short), reference.logits(short)) < 1e-3
    if manifest["model_type"] == "emotion-compact":  # a CNN: no int8 graph (optimize.py)
        # one graph from input_values: the log-mel front end fused ahead of the CNN
        assert manifest["model_input"] == "input_values" and manifest["files"]["int8"] is None
        import onnx

        graph = onnx.load(str(folder / "model.onnx")).graph
        assert [i.name for i in graph.input] == ["input_values"]
        assert any("log_mel" in node.output for node in graph.node)
        assert "unavailable" in manifest["checks"]["onnx/int8"]
        with pytest.raises(ModelError, match="no ONNX int8 model"):
            load_model(folder, backend="onnx", precision="int8")
    else:
        int8 = load_model(folder, backend="onnx", precision="int8")
        probs = int8.predict_proba(windows)
        assert probs.shape == (3, len(reference.labels)) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    auto = load_model(folder)  # an optimize folder loads with auto
    chosen = manifest["checks"][f"{auto.backend}/{auto.precision}"]
    assert chosen["top1_agreement"] >= 0.98 and chosen["rel_logit_diff"] <= 0.10


@pytest.mark.parametrize(("kernel", "stride", "bias", "length"),
                         [(3, 2, True, 6399), (3, 2, False, 6400), (2, 2, True, 51),
                          (4, 3, False, 9)])
def test_matmul_conv_is_the_same_convolution(kernel: int, stride: int, bias: bool,
                                             length: int) -> None:
    """The MatMul form of an encoder conv gives the conv's output for any input length."""
    import torch

    torch.manual_seed(kernel * 10 + stride)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride, bias=bias)
    x = torch.randn(2, 6, length)
    with torch.no_grad():
        torch.testing.assert_close(MatmulConv1d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_encoder_convs_are_exported_as_matmul(tiny_layer_norm: Path, tiny_wav2vec2: Path,
                                              optimized_tiny: Path) -> None:
    """Layers 1-6 of both encoder kinds are rewritten without changing the features, and the
    split export carries an int8 conv encoder whose agreement is measured with the rest."""
    import torch
    from transformers import AutoModelForAudioClassification

    for folder in (tiny_layer_norm, tiny_wav2vec2):
        model = AutoModelForAudioClassification.from_pretrained(folder).eval()
        x = torch.from_numpy(_windows(3, 2))
        with torch.no_grad():
            before = model.wav2vec2.feature_extractor(x)
            assert matmul_convs(model) == 6
            after = model.wav2vec2.feature_extractor(x)
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    manifest = json.loads((optimized_tiny / MANIFEST_NAME).read_text())
    assert manifest["files"]["encoder_int8"] == "feature_encoder.int8.onnx"
    import onnx

    ops = {node.op_type for node in onnx.load(optimized_tiny / "feature_encoder.onnx").graph.node}
    assert "MatMul" in ops
    quantised = {node.input[1].split(".")[-3]: node.op_type
                 for node in onnx.load(optimized_tiny / "feature_encoder.int8.onnx").graph.node
                 if "MatMul" in node.op_type and "conv_layers" in node.input[1]}
    assert quantised == {str(layer): "MatMulInteger" for layer in range(1, 7)}
    int8 = load_model(optimized_tiny, backend="onnx", precision="int8", encoder_cache=False)
    assert isinstance(int8, OnnxRunner)
    assert int8.files.full_encoder is not None
    assert int8.files.full_encoder.name == "feature_encoder.int8.onnx"
    assert manifest["checks"]["onnx/int8"]["rel_logit_diff"] < 0.2


def test_export_preparation_keeps_the_logits(tiny_layer_norm: Path, tiny_wav2vec2: Path) -> None:
    """MatMul convolutions, the instance-norm form of base's GroupNorm, weight norm baked into
    the positional convolution and eager attention: the same logits as the checkpoint."""
    import torch
    from torch.nn.utils import parametrize
    from transformers import AutoModelForAudioClassification

    x = torch.from_numpy(_windows(11, 3))
    for folder in (tiny_layer_norm, tiny_wav2vec2):
        model = AutoModelForAudioClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            before = model(input_values=x).logits
            prepare_for_export(model)
            after = model(input_values=x).logits
        conv = model.wav2vec2.encoder.pos_conv_embed.conv
        assert not parametrize.is_parametrized(conv, "weight")
        assert model.config._attn_implementation == "eager"
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    norm = model.wav2vec2.feature_extractor.conv_layers[0].layer_norm  # the group-norm kind
    assert type(norm).__name__ == "InstanceNormAffine"


def _conv_graph(channels: int, groups: int, kernel: int, stride: int = 1) -> object:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(kernel)
    weight = (0.05 * rng.standard_normal((channels, channels // groups, kernel))).astype(
        np.float32)
    bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups,
                            pads=[kernel // 2, kernel // 2], strides=[stride],
                            kernel_shape=[kernel], name="pos_conv")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", channels, "t"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", channels, "u"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    return model


def _run_graph(model: object, x: NDArray[np.float32]) -> NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),  # type: ignore[attr-defined]
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize(("kernel", "batch", "frames"), [(16, 1, 49), (16, 3, 8), (7, 2, 30)])
def test_grouped_conv_in_int8_matches_the_conv(kernel: int, batch: int, frames: int) -> None:
    """The int8 im2col form of a grouped, padded Conv gives the Conv's output shape and values
    within int8 error, for even and odd kernels, several batch sizes and lengths shorter
    than the kernel; other convolutions are left alone."""
    import onnx

    model = _conv_graph(24, 4, kernel)
    x = np.random.default_rng(frames).standard_normal((batch, 24, frames)).astype(np.float32)
    expected = _run_graph(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)  # type: ignore[arg-type]
    assert quantize_grouped_convs(rewritten) == 1
    assert "Conv" not in {node.op_type for node in rewritten.graph.node}
    got = _run_graph(rewritten, x)
    assert got.shape == expected.shape
    assert _relative(got, expected) < 0.03
    for untouched in (_conv_graph(24, 1, kernel), _conv_graph(24, 4, kernel, stride=2)):
        assert quantize_grouped_convs(untouched) == 0


def test_encoder_taps_are_sliced_after_quantisation(optimized_tiny: Path,
                                                   tmp_path: Path) -> None:
    """Moving the encoder's activation quantisation in front of its tap slices leaves no
    quantiser reading a Concat and gives the features of the graph as quantize_dynamic
    wrote it (the scales come out the same here: the taps leave at most one frame out)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from streamer.offline.onnx_rewrite import quantize_before_taps

    plain = tmp_path / "plain.int8.onnx"
    quantize_dynamic(str(optimized_tiny / "feature_encoder.onnx"), str(plain),
                     op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)  # as optimize quantises
    model = onnx.load(plain)
    assert quantize_before_taps(model) == 6
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    assert all(producer.get(node.input[0]) != "Concat" for node in model.graph.node
               if node.op_type == "DynamicQuantizeLinear")
    assert quantize_before_taps(model) == 0  # nothing left to move

    def features(graph: object, x: NDArray[np.float32]) -> NDArray[np.float32]:
        data = graph.SerializeToString() if hasattr(graph, "SerializeToString") else str(graph)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"input_values": x})[0])

    x = _windows(13, 2, 32000 - 80)  # 6383 frames after layer 0: layer 1's taps use all
    np.testing.assert_allclose(features(model, x), features(plain, x), rtol=1e-5, atol=1e-6)
    shipped = features(optimized_tiny / "feature_encoder.int8.onnx", x)
    np.testing.assert_allclose(shipped, features(plain, x), rtol=1e-5, atol=1e-6)


def test_int8_graph_has_no_fp32_positional_conv(optimized_tiny: Path) -> None:
    """optimize's int8 head runs the positional convolution as MatMulInteger; fp32 keeps Conv."""
    import onnx

    def ops(name: str) -> set[str]:
        return {node.op_type for node in onnx.load(optimized_tiny / name).graph.node}

    assert "Conv" in ops("model.onnx")
    assert "Conv" not in ops("model.int8.onnx")
    assert "MatMulInteger" in ops("model.int8.onnx") | ops("feature_encoder.int8.onnx")


# -- batching on CPU --------------------------------------------------------------------------


def test_preferred_batch_is_the_measured_best_when_it_pays() -> None:
    """The batch with the least ms/window, only when at least 5 % under one window per call."""
    assert preferred_batch({"ms_per_window_by_batch": {"1": 100.0, "2": 90.0, "4": 92.0}}) == 2
    assert preferred_batch({"ms_per_window_by_batch": {"1": 100.0, "2": 97.0, "4": 99.0}}) == 1
    assert preferred_batch({"ms_per_window_by_batch": {"1": 100.0, "2": 120.0}}) == 1
    assert preferred_batch({"ms_per_window": 5.0}) == 1  # an older manifest
    assert preferred_batch({}) == 1


def test_optimize_times_batches_and_the_model_carries_the_choice(optimized_tiny: Path) -> None:
    """Each setting's check holds ms/window at 1, 2 and 4 windows per call; the loaded model's
    preferred_batch is what preferred_batch makes of its setting's check."""
    manifest = json.loads((optimized_tiny / MANIFEST_NAME).read_text())
    for key in ("torch/fp32", "onnx/int8"):
        assert set(manifest["checks"][key]["ms_per_window_by_batch"]) == {"1", "2", "4"}
    model = load_model(optimized_tiny, backend="onnx", precision="int8")
    assert model.preferred_batch == preferred_batch(manifest["checks"]["onnx/int8"])


class _BatchProbe(SingleWorkerCpuModel):
    """Records batch sizes; the first call waits until every stream has queued its windows."""

    name = "batch-probe"
    labels = TINY_LABELS
    sample_rate_hz = 16000

    def __init__(self, preferred: int) -> None:
        self.lock = threading.Lock()
        self.preferred_batch = preferred
        self.sizes: list[int] = []
        self.fed = threading.Event()

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        assert self.fed.wait(TIMEOUT_S)
        with self.lock:
            self.sizes.append(len(windows))
        return np.full((len(windows), 4), 0.25, dtype=np.float32)


@pytest.mark.parametrize(("preferred", "max_batch", "expected"), [(3, None, 3), (3, 2, 2),
                                                                   (1, None, 1)])
def test_cpu_engine_batches_as_the_model_prefers(preferred: int, max_batch: int | None,
                                                 expected: int) -> None:
    """On CPU a worker takes up to the model's preferred_batch queued windows of different
    streams per call; an explicit max_batch wins."""
    probe = _BatchProbe(preferred)
    config = EngineConfig(workers=1, max_batch=max_batch, realtime=False, queue_windows=64)
    with Engine(probe, config, lambda event: None) as engine:  # type: ignore[arg-type]
        assert engine.max_batch == expected
        feeds = [engine.open_stream(f"s{i}", sample_rate_hz=16000) for i in range(4)]
        for i, feed in enumerate(feeds):
            feed.feed(speech_like(4.0, seed=20 + i))
        probe.fed.set()
        for feed in feeds:
            feed.close()
        assert engine.drain(TIMEOUT_S)
    assert max(probe.sizes) == expected


# -- frame cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cached_frames_equal_uncached_ones(backend: str, tiny_layer_norm: Path,
                                           optimized_tiny: Path) -> None:
    """Hop-aligned windows reuse frames 0..73 and match a full computation (ONNX bit-exact,
    torch within float reassociation of the conv kernels)."""
    model = load_model(tiny_layer_norm if backend == "torch" else optimized_tiny,
                         backend=backend, precision="fp32", device="cpu")
    cache = model.encoder_cache
    assert cache is not None
    assert (cache.geometry.receptive_field, cache.geometry.stride) == (400, 320)
    audio = speech_like(5.0, seed=3)
    for k in range(5):
        window = audio[None, k * HOP: k * HOP + WINDOW]
        cached = cache.features(window, model.encode)
        direct = model.encode(window)
        if backend == "onnx":
            assert np.array_equal(cached, direct)
        else:
            np.testing.assert_allclose(cached, direct, rtol=0, atol=1e-5)
        assert cache.hits == 74 * k and cache.misses == 99 + 25 * k
    uncached = load_model(tiny_layer_norm if backend == "torch" else optimized_tiny,
                            backend=backend, precision="fp32", device="cpu", encoder_cache=False)
    last = audio[None, 4 * HOP: 4 * HOP + WINDOW]
    np.testing.assert_allclose(model.predict_proba(last), uncached.predict_proba(last),
                               rtol=0, atol=1e-6)


def test_a_window_with_other_audio_misses_the_cache(tiny_layer_norm: Path) -> None:
    """Frames are looked up by their exact input samples: different audio recomputes."""
    model = load_model(tiny_layer_norm, backend="torch", precision="fp32", device="cpu")
    cache = model.encoder_cache
    assert cache is not None
    audio = speech_like(3.0, seed=4)
    cache.features(audio[None, :WINDOW], model.encode)
    changed = audio[HOP:HOP + WINDOW].copy()
    changed[0] += 1e-3  # touches frame 0 only; the rest are computed from there on
    cache.features(changed[None], model.encode)
    assert cache.hits == 0


def test_cache_is_off_where_not_exact(tiny_wav2vec2: Path, optimized_bundled: Path) -> None:
    """Group norm (base), per-window normalisation and non-wav2vec2 models get no cache;
    forcing it there is an error."""
    assert load_model(tiny_wav2vec2, backend="torch", precision="fp32").encoder_cache is None
    assert load_model(optimized_bundled, backend="onnx", precision="fp32").encoder_cache is None
    with pytest.raises(ModelError, match="feat_extract_norm 'group'"):
        load_model(tiny_wav2vec2, backend="torch", precision="fp32", encoder_cache=True)


def test_frame_geometry_of_wav2vec2() -> None:
    """The default wav2vec2 conv stack sees 400 samples per frame with a 320-sample stride."""
    from transformers import Wav2Vec2Config

    geometry = encoder_geometry(Wav2Vec2Config())
    assert (geometry.receptive_field, geometry.stride, geometry.frames(WINDOW)) == (400, 320, 99)
    with pytest.raises(ValueError):
        FrameCache(geometry, max_frames=0)


# -- threads ----------------------------------------------------------------------------------


class _ThreadProbe:
    """The bundled torch runner, recording torch's intra-op thread count inside the worker."""

    def __init__(self) -> None:
        self.runner = load_model(device="cpu", backend="torch")
        self.name, self.labels = "probe", self.runner.labels
        self.sample_rate_hz, self.device = self.runner.sample_rate_hz, self.runner.device
        self.preferred_batch, self.narrowband_ok = 1, self.runner.narrowband_ok
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def worker_count(self, cpus: int) -> int:
        return self.runner.worker_count(cpus)

    def set_worker_threads(self, threads: int) -> None:
        self.runner.set_worker_threads(threads)

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with self.lock:
            self.seen.add(torch.get_num_threads())
        return self.runner.predict_proba(windows)


def _run_engine(model: ClassifierModel, config: EngineConfig) -> list[Event]:
    events: list[Event] = []
    with Engine(model, config, events.append) as engine:
        for i in range(2):
            with engine.open_stream(f"s{i}", sample_rate_hz=16000) as feed:
                feed.feed(speech_like(3.0, seed=i))
        assert engine.drain(TIMEOUT_S)
    return events


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_workers_use_the_configured_threads(threads: int) -> None:
    """Each worker runs the torch model with threads_per_worker intra-op threads."""
    probe = _ThreadProbe()
    events = _run_engine(probe, EngineConfig(workers=2, threads_per_worker=threads,
                                             realtime=False))
    assert any(isinstance(e, WindowLabel) for e in events)
    assert probe.seen == {threads}


def test_torch_runner_sets_the_threads_of_its_caller() -> None:
    """set_worker_threads on a CPU torch runner is torch.set_num_threads in that thread."""
    import torch

    model = load_model(device="cpu", backend="torch")
    seen: list[int] = []

    def worker() -> None:
        model.set_worker_threads(3)
        seen.append(torch.get_num_threads())
        model.set_worker_threads(1)
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(TIMEOUT_S)
    assert seen == [3, 1]
    torch.set_num_threads(before)


def test_onnx_sessions_get_the_workers_thread_count(optimized_tiny: Path) -> None:
    """The engine sizes ONNX Runtime's intra-op pool from threads_per_worker."""
    model = load_model(optimized_tiny, backend="onnx", precision="int8")
    assert isinstance(model, OnnxRunner)
    events = _run_engine(model, EngineConfig(workers=2, threads_per_worker=2, realtime=False))
    assert any(isinstance(e, WindowLabel) for e in events)
    assert model.session_options.intra_op_num_threads == 2


def test_analyze_runs_on_onnx_int8(optimized_tiny: Path, tmp_path: Path) -> None:
    """analyze --model DIR --backend onnx --precision int8 writes the windows."""
    wav = tmp_path / "call.wav"
    sf.write(wav, speech_like(3.0, seed=5), 16000)
    out = tmp_path / "t.csv"
    code = main(["analyze", str(wav), "--out", str(out), "--model", str(optimized_tiny),
                 "--backend", "onnx", "--precision", "int8", "--workers", "2"])
    assert code == 0
    assert len(out.read_text().splitlines()) > 2


def test_workers_default_to_one_per_core_for_transformer_models(
    tiny_wav2vec2: Path, optimized_tiny: Path, optimized_bundled: Path
) -> None:
    """The runners' worker policy: one per available CPU (at most 8) for a wav2vec2 classifier
    on CPU and for the compact model's fused ONNX graph (GIL-free); one for the compact model
    on torch or from an older folder's numpy log-mel, and on CUDA; the engine follows it
    unless told otherwise."""
    from streamer.engine import available_cpus
    from streamer.models.runner import workers_for

    bundled = load_model()
    tiny = load_model(tiny_wav2vec2, backend="torch", precision="fp32")
    assert (bundled.worker_count(1), bundled.worker_count(2), bundled.worker_count(16)) == (
        1, 2, 8)
    assert load_model(backend="torch").worker_count(16) == 1
    assert load_model(optimized_bundled, backend="onnx", precision="fp32").worker_count(16) == 8
    assert workers_for("cpu", "emotion-compact", 16) == 1
    assert workers_for("cpu", "emotion-compact", 16, gil_free=True) == 8
    assert (tiny.worker_count(1), tiny.worker_count(3), tiny.worker_count(16)) == (1, 3, 8)
    assert load_model(optimized_tiny, backend="onnx", precision="int8").worker_count(16) == 8
    assert workers_for("cuda", "wav2vec2", 16) == 1 and workers_for("cpu", None, 16) == 1
    with Engine(tiny, EngineConfig(realtime=False), lambda event: None) as engine:
        assert engine.workers == tiny.worker_count(available_cpus())
    with Engine(tiny, EngineConfig(workers=1, realtime=False), lambda event: None) as engine:
        assert engine.workers == 1
