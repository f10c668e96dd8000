"""Training: the compact recipe learns, fine-tuning runs through Trainer, bad data is refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from server.cli import main
from streamer.errors import DataError
from streamer.testing import speech_like

GEN_LABELS = ("hiss", "hum", "whistle")


def _generated_clip(label: str, rng: np.random.Generator, rate_hz: int) -> NDArray[np.float32]:
    """One 1.5-2.5 s clip whose class shows in both spectrum and rhythm."""
    seconds = float(rng.uniform(1.5, 2.5))
    n = int(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    if label == "hum":
        pitch = float(rng.uniform(100, 160))
        return speech_like(
            seconds, rate_hz=rate_hz, seed=int(rng.integers(1 << 30)), pitch_hz=pitch
        )
    if label == "whistle":
        f = float(rng.uniform(2000, 3000))
        gate = np.sin(2 * np.pi * float(rng.uniform(1.5, 2.5)) * t + rng.uniform(0, 6)) > 0
        x = 0.3 * np.sin(2 * np.pi * f * t) * gate + 0.01 * rng.standard_normal(n)
    else:
        am = 0.6 + 0.4 * np.sin(2 * np.pi * float(rng.uniform(6, 10)) * t)
        x = 0.2 * rng.standard_normal(n) * am
    return (x * float(rng.uniform(0.3, 1.0))).astype(np.float32)


def make_dataset(root: Path, per_class: int, *, seed: int) -> Path:
    """Write a folder-per-label dataset: 44.1 kHz stereo and 16 kHz mono files mixed."""
    rng = np.random.default_rng(seed)
    for label in GEN_LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if i % 2:
                clip = _generated_clip(label, rng, 44100)
                stereo = np.stack([clip, 0.8 * clip], axis=1)
                sf.write(root / label / f"{label}_{i:02d}.wav", stereo, 44100, subtype="PCM_16")
            else:
                clip = _generated_clip(label, rng, 16000)
                sf.write(root / label / f"{label}_{i:02d}.wav", clip, 16000, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def gen_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated training set: 3 acoustically different classes, 12 clips each."""
    return make_dataset(tmp_path_factory.mktemp("gen-train"), 12, seed=1)


@pytest.fixture(scope="module")
def gen_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated held-out set from another seed."""
    return make_dataset(tmp_path_factory.mktemp("gen-test"), 6, seed=2)


def test_compact_recipe_learns_generated_classes(gen_train: Path, gen_test: Path) -> None:
    """A few epochs of the compact recipe score far above chance (1/3) on held-out clips."""
    from streamer.models.torch_runner import TorchRunner
    from streamer.offline.dataset import load_dataset
    from streamer.offline.evaluation import evaluate_model
    from streamer.offline.training import (
        CompactTrainConfig,
        compact_feature_extractor,
        train_compact,
    )

    train = load_dataset(gen_train)
    assert train.labels == GEN_LABELS and len(train) == 36
    net = train_compact(
        train, CompactTrainConfig(epochs=12, batch_size=8, seed=0, members=1), progress=False
    )
    model = TorchRunner(
        name="gen",
        labels=train.labels,
        sample_rate_hz=16000,
        device="cpu",
        model=net,
        feature_extractor=compact_feature_extractor(),
    )
    result = evaluate_model(model, load_dataset(gen_test, labels=train.labels))
    assert result.clips.accuracy >= 0.8, result.clips
    assert result.windows.accuracy >= 0.8, result.windows


def test_train_cli_compact_output_loads(gen_train: Path, tmp_path: Path) -> None:
    """`train --base compact` writes a folder that load_model reads, with the folder labels."""
    from streamer.models.loading import load_model

    out = tmp_path / "model"
    code = main(
        [
            "train",
            "--data",
            str(gen_train),
            "--out",
            str(out),
            "--members",
            "1",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    model = load_model(out)
    assert model.labels == GEN_LABELS
    assert model.predict_proba(np.zeros((1, 16000), np.float32)).shape == (1, 3)


def test_fine_tune_tiny_wav2vec2(gen_train: Path, tiny_wav2vec2: Path, tmp_path: Path) -> None:
    """`train --base <tiny wav2vec2 folder>` fine-tunes a few steps via Trainer; output loads."""
    from streamer.models.loading import load_model

    out = tmp_path / "ft"
    code = main(
        [
            "train",
            "--data",
            str(gen_train),
            "--out",
            str(out),
            "--base",
            str(tiny_wav2vec2),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    model = load_model(out)
    assert model.labels == GEN_LABELS  # the 4-label head was replaced by a 3-label one
    probs = model.predict_proba(np.stack([speech_like(1.0, seed=3)]))
    assert probs.shape == (1, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_missing_data_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing data folder is a one-line error and exit code 2."""
    code = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no such data folder" in _one_line_error(capsys)


def test_empty_data_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data folder with no label folders is a one-line error and exit code 2."""
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no label folders" in _one_line_error(capsys)


def test_label_folders_without_audio(tmp_path: Path) -> None:
    """Label folders that hold no audio files are a DataError."""
    from streamer.offline.dataset import load_dataset

    (tmp_path / "Angry").mkdir()
    (tmp_path / "Sad").mkdir()
    (tmp_path / "Sad" / "notes.txt").write_text("not audio")
    with pytest.raises(DataError, match="hold no audio files"):
        load_dataset(tmp_path)


def test_single_class_is_refused(tmp_path: Path) -> None:
    """Training needs at least two classes."""
    from streamer.offline.dataset import load_dataset

    (tmp_path / "Angry").mkdir()
    sf.write(tmp_path / "Angry" / "a.wav", speech_like(1.0), 16000)
    with pytest.raises(DataError, match="at least 2 label folders"):
        load_dataset(tmp_path)


def test_bad_files_are_skipped_with_a_warning(
    gen_train: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unreadable and zero-length files are named in a warning and training goes on."""
    from streamer.offline.dataset import load_dataset

    data_dir = tmp_path / "data"
    for label in GEN_LABELS:
        (data_dir / label).mkdir(parents=True)
        for src in sorted((gen_train / label).iterdir())[:2]:
            (data_dir / label / src.name).write_bytes(src.read_bytes())
    (data_dir / "hum" / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(data_dir / "hiss" / "empty.wav", np.zeros(0, np.float32), 16000)
    with caplog.at_level(logging.WARNING, logger="streamer.offline.dataset"):
        data = load_dataset(data_dir)
    assert len(data) == 6
    assert {p.name for p in data.skipped} == {"garbage.wav", "empty.wav"}
    text = caplog.text
    assert "garbage.wav" in text and "empty.wav" in text
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(out),
                "--members",
                "1",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file()


def test_nothing_usable_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When every file is unreadable the run stops with a one-line error, exit code 2."""
    for label in ("Angry", "Sad"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.wav").write_bytes(b"junk")
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "none of the 2 audio file(s) could be read" in _one_line_error(capsys)


def test_bad_option_exits_2(
    gen_train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nonsensical option value is a one-line error, exit code 2."""
    code = main(["train", "--data", str(gen_train), "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert code == 2
    assert "epochs must be >= 1" in _one_line_error(capsys)


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--speed-perturb", "0.7", "speed_perturb must be in [0, 0.5)"),
    ("--gain-db", "-1", "gain_db must be in [0, 40]"),
    ("--group-regex", "(", "bad speaker regex '('"),
])
def test_bad_augmentation_option_exits_2(
    flag: str, value: str, words: str, gen_train: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Out-of-range augmentation or speaker settings are one-line errors, exit code 2."""
    code = main(["train", "--data", str(gen_train), "--out", str(tmp_path / "o"), flag, value])
    assert code == 2
    assert words in _one_line_error(capsys)


def test_speaker_balanced_draws_give_each_speaker_of_a_class_equal_weight() -> None:
    """With speaker ids, a class's draws split evenly across its speakers, whatever their
    clip counts, and the classes stay balanced."""
    from streamer.offline.training import _epoch_order, draw_weights

    targets = np.array([0] * 9 + [0] + [1] * 5)
    groups = ["A"] * 9 + ["B"] + ["C"] * 5  # class 0: A has 9 clips, B has 1
    rng = np.random.default_rng(0)
    weights = draw_weights(targets, groups=groups)
    drawn = np.concatenate([_epoch_order(targets, rng, weights=weights) for _ in range(2000)])
    share = np.bincount(drawn, minlength=len(targets)) / len(drawn)
    assert share[9] == pytest.approx(0.25, abs=0.01)  # B's one clip: half of class 0
    assert share[:9].sum() == pytest.approx(0.25, abs=0.01)
    assert share[10:].sum() == pytest.approx(0.5, abs=0.01)


def test_speed_versions_play_clips_faster_and_slower() -> None:
    """Speed perturbation adds a shorter (faster) and a longer (slower) copy of each clip."""
    from streamer.offline.training import _speed_versions

    clip = speech_like(1.0, seed=1)
    assert len(_speed_versions([clip], 0.0)) == 1
    same, faster, slower = _speed_versions([clip], 0.1)
    assert same[0] is clip
    assert len(faster[0]) == pytest.approx(16000 / 1.1, abs=2)
    assert len(slower[0]) == pytest.approx(16000 / 0.9, abs=2)
    assert faster[0].dtype == slower[0].dtype == np.float32


def test_corpus_balanced_weights_keep_classes_equal_when_a_corpus_lacks_one() -> None:
    """Each class weighs 1/n_classes overall, each corpus that has a class splits it evenly,
    and within a (corpus, class) each speaker weighs the same."""
    from streamer.offline.training import draw_weights

    # corpus 0: classes 0, 1, 2 (class 0: speakers a (3 clips) and b (1 clip)); corpus 1 lacks 2
    targets = np.array([0, 0, 0, 0, 1, 2, 0, 0, 1, 1, 1])
    corpora = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = ["a", "a", "a", "b", "c", "c", "d", "d", "e", "e", "e"]
    w = draw_weights(targets, corpora=corpora, groups=groups)
    assert w is not None
    for cls in range(3):
        assert w[targets == cls].sum() == pytest.approx(1 / 3)
    assert w[(corpora == 0) & (targets == 0)].sum() == pytest.approx(1 / 6)
    assert w[3] == pytest.approx(1 / 12)  # speaker b's one clip: half of its cell
    assert w[5] == pytest.approx(1 / 3)  # class 2 lives in corpus 0 only: full weight
    assert draw_weights(targets, balance_classes=False) is None
