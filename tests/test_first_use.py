"""Optimised on first use: a plain checkpoint is exported once into a real cache folder (a real
``emotion-monitor optimize`` subprocess), found there later, rebuilt when damaged, and run with
torch when the cache cannot be written or the checkpoint cannot be exported."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from server.cli import main
from streamer.models.loading import load_model
from streamer.testing import speech_like
from tests.conftest import TIMEOUT_S, TINY_LABELS

#: an export with its agreement checks takes about a minute of the 2 shared cores
BUILD_TIMEOUT_S = TIMEOUT_S * 20
#: a loader process: INFO logs on stderr, the chosen backend on stdout
LOADER = (
    "import logging, sys; from pathlib import Path; "
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr, "
    "format='%(levelname)s %(name)s: %(message)s'); "
    "from streamer.models.loading import load_model; "
    "m = load_model(sys.argv[1], device='cpu', cache_dir=Path(sys.argv[2])); "
    "print(m.backend, m.precision)"
)
BUILDING = "on first use"
FOUND = "using the optimised copy"


def start_loader(model: str, cache_dir: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOADER, model, str(cache_dir)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env),
    )


def finish(child: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = child.communicate(timeout=BUILD_TIMEOUT_S)
    return child.returncode, out, err


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "optimized").iterdir() if p.is_dir())


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("streamer.models") and r.levelno == level]


@pytest.fixture(scope="module")
def first_runs(tiny_wav2vec2: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, list[tuple[int, str, str]]]:
    """Two loader processes started at once against one empty cache folder, both finished."""
    cache_dir = tmp_path_factory.mktemp("first-use") / "cache"
    children = [start_loader(str(tiny_wav2vec2), cache_dir) for _ in range(2)]
    try:
        return cache_dir, [finish(child) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.slow
def test_two_first_runs_at_once_build_one_entry(
    first_runs: tuple[Path, list[tuple[int, str, str]]]
) -> None:
    """Two processes starting at once on an empty cache: both load ONNX, exactly one builds."""
    cache_dir, results = first_runs
    for code, out, err in results:
        assert code == 0, err
        assert out.split()[0] == "onnx", err
    builders = [err for _, _, err in results if BUILDING in err]
    assert len(builders) == 1, [err for _, _, err in results]
    assert "optimised " in builders[0] and "cached in" in builders[0]
    waiter = next(err for _, _, err in results if BUILDING not in err)
    assert FOUND in waiter
    (entry,) = entries(cache_dir)
    assert (entry / "complete.json").is_file() and (entry / "optimize.json").is_file()
    assert not list((cache_dir / "optimized").glob(".build-*"))


@pytest.mark.slow
def test_later_load_uses_the_cache_without_exporting(
    first_runs: tuple[Path, list[tuple[int, str, str]]], tiny_wav2vec2: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A later load finds the checked entry: no export subprocess, the ONNX runner as built."""
    cache_dir, _ = first_runs
    caplog.set_level(logging.INFO, logger="streamer.models")
    model = load_model(tiny_wav2vec2, device="cpu", cache_dir=cache_dir)
    assert model.backend == "onnx"
    assert model.labels == TINY_LABELS
    assert model.name == str(tiny_wav2vec2)
    info = messages(caplog)
    assert not [m for m in info if BUILDING in m]
    assert len([m for m in info if FOUND in m]) == 1
    probs = model.predict_proba(speech_like(2.0)[None, :])
    assert probs.shape == (1, len(TINY_LABELS))


@pytest.mark.slow
def test_hub_id_in_the_local_hub_cache_finds_the_same_entry(
    first_runs: tuple[Path, list[tuple[int, str, str]]], tiny_wav2vec2: Path, tmp_path: Path
) -> None:
    """A hub id already downloaded is keyed by its snapshot's content: the same entry, no
    export (the key is the content, not the path)."""
    cache_dir, _ = first_runs
    hub = tmp_path / "hub"
    revision = "0" * 40
    repo = hub / "models--test--tiny-wav2vec2"
    shutil.copytree(tiny_wav2vec2, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code, out, err = finish(start_loader("test/tiny-wav2vec2", cache_dir,
                                         HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1"))
    assert code == 0, err
    assert out.split()[0] == "onnx"
    assert FOUND in err and BUILDING not in err
    assert len(entries(cache_dir)) == 1


@pytest.mark.slow
def test_truncated_cached_graph_is_detected_and_rebuilt(
    first_runs: tuple[Path, list[tuple[int, str, str]]], tiny_wav2vec2: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cached graph cut short (a crash, a full disk) is never loaded: it is rebuilt."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(first_runs[0], cache_dir)
    (entry,) = entries(cache_dir)
    graph = entry / "model.int8.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="streamer.models")
    model = load_model(tiny_wav2vec2, device="cpu", cache_dir=cache_dir)
    assert model.backend == "onnx"
    (damaged,) = [m for m in messages(caplog, logging.WARNING) if "damaged" in m]
    assert "model.int8.onnx is truncated" in damaged
    assert [m for m in messages(caplog) if BUILDING in m]
    complete = json.loads((entry / "complete.json").read_text())
    assert graph.stat().st_size == complete["graphs"]["model.int8.onnx"]["bytes"]
    caplog.clear()
    load_model(tiny_wav2vec2, device="cpu", cache_dir=cache_dir)
    assert [m for m in messages(caplog) if FOUND in m]


def test_unwritable_cache_dir_runs_uncached_with_one_warning(
    tiny_wav2vec2: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache folder that cannot be made (under a file): torch as today, one warning."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    caplog.set_level(logging.INFO, logger="streamer.models")
    model = load_model(tiny_wav2vec2, device="cpu", cache_dir=blocker / "cache")
    assert model.backend == "torch"
    (warning,) = messages(caplog, logging.WARNING)
    assert "not writable" in warning and "uncached" in warning
    assert not [m for m in messages(caplog) if BUILDING in m]


def save_tiny_ast(folder: Path) -> Path:
    """A tiny random Audio Spectrogram Transformer: it loads and runs with torch, but its
    input is a spectrogram, so optimize's waveform export fails."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_mel_bins=16, max_length=64, patch_size=16, frequency_stride=16, time_stride=16,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    ASTForAudioClassification(config).eval().save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_unexportable_checkpoint_falls_back_to_torch_and_is_remembered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Export fails: torch, one warning with the reason; the next load does not retry."""
    folder = save_tiny_ast(tmp_path / "ast")
    cache_dir = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="streamer.models")
    model = load_model(folder, device="cpu", cache_dir=cache_dir)
    assert model.backend == "torch"
    (warning,) = messages(caplog, logging.WARNING)
    assert "could not be optimised" in warning and "ONNX export" in warning
    (entry,) = entries(cache_dir)
    assert "ONNX export" in json.loads((entry / "failed.json").read_text())["reason"]
    caplog.clear()
    assert load_model(folder, device="cpu", cache_dir=cache_dir).backend == "torch"
    (again,) = messages(caplog, logging.WARNING)
    assert "could not be optimised before" in again and "ONNX export" in again
    assert not [m for m in messages(caplog) if BUILDING in m]


@pytest.mark.slow
def test_optimize_folders_bundled_model_and_backend_torch_skip_the_cache(
    first_runs: tuple[Path, list[tuple[int, str, str]]], tiny_wav2vec2: Path, tmp_path: Path
) -> None:
    """An optimize folder, the bundled model and --backend torch load as today: no cache."""
    (entry,) = entries(first_runs[0])
    unused = tmp_path / "unused"
    assert load_model(entry, device="cpu", cache_dir=unused).backend == "onnx"
    load_model(None, device="cpu", cache_dir=unused)
    torch_model = load_model(tiny_wav2vec2, device="cpu", backend="torch", cache_dir=unused)
    assert torch_model.backend == "torch"
    assert not unused.exists()


@pytest.mark.slow
def test_analyze_cache_dir_flag_reaches_the_loader(
    first_runs: tuple[Path, list[tuple[int, str, str]]], tiny_wav2vec2: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`analyze --cache-dir DIR` loads the optimised copy from DIR."""
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate([speech_like(3.0), np.zeros(16000, np.float32)]), 16000)
    caplog.set_level(logging.INFO, logger="streamer.models")
    code = main(["analyze", str(wav), "--out", str(tmp_path / "t.csv"), "--model",
                 str(tiny_wav2vec2), "--model-device", "cpu", "--cache-dir",
                 str(first_runs[0])])
    assert code == 0
    loaded: list[Any] = [m for m in messages(caplog) if m.startswith("loaded model")]
    assert FOUND in " ".join(messages(caplog)) and "backend onnx" in loaded[0]
