"""Scoring, windowing, folds, the speaker-lookup baseline, and evaluate/crossval on URDU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from server.cli import main
from streamer.errors import DataError
from streamer.offline.crossval import (
    group_folds,
    reference_split,
    speaker_majority,
    stratified_folds,
)
from streamer.offline.dataset import Clip, group_ids
from streamer.offline.evaluation import clip_windows, plot_confusion, render_scores, score
from streamer.testing import speech_like, tone

URDU_LABELS = ("Angry", "Happy", "Neutral", "Sad")


def test_score_accuracy_uar_and_confusion() -> None:
    """UAR averages recall over the classes present in the truth; absent classes are NaN."""
    labels = ("a", "b", "c")
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    s = score(y_true, y_pred, labels)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.uar == pytest.approx((0.75 + 0.5) / 2)
    assert s.recall[:2] == pytest.approx((0.75, 0.5))
    assert np.isnan(s.recall[2])
    assert s.confusion.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 0]]
    text = render_scores(s, "clips")
    assert "accuracy=0.667" in text and "c=n/a" in text


def test_clip_windows_rule() -> None:
    """2 s windows with 1 s hop; the last ends at the clip end; a short clip is one window."""
    rate = 16000
    short = np.ones(int(1.5 * rate), np.float32)
    assert clip_windows(short).shape == (1, int(1.5 * rate))
    clip = np.arange(int(3.5 * rate), dtype=np.float32)
    windows = clip_windows(clip)
    assert windows.shape == (3, 2 * rate)
    assert windows[0, 0] == 0 and windows[1, 0] == rate
    assert windows[-1, -1] == clip[-1]


def test_group_folds_never_split_a_speaker() -> None:
    """Speaker folds partition the clips and keep every speaker on one side."""
    groups = ["A"] * 10 + ["B"] * 6 + ["C"] * 5 + ["D"] * 3 + ["E"] * 2 + ["F"] * 2
    folds = group_folds(groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for test in folds:
        inside = {groups[i] for i in test}
        outside = {groups[i] for i in range(len(groups)) if i not in set(test.tolist())}
        assert not inside & outside
    with pytest.raises(DataError, match="only 6 groups"):
        group_folds(groups, 7)


def test_stratified_folds_and_reference_split() -> None:
    """Random folds spread each class evenly; the reference split holds 20% of each class."""
    targets = np.repeat(np.arange(4), 100)
    folds = stratified_folds(targets, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(400))
    for test in folds:
        assert np.bincount(targets[test]).tolist() == [20, 20, 20, 20]
    test = reference_split(targets, test_fraction=0.2, seed=42)
    assert np.bincount(targets[test]).tolist() == [20, 20, 20, 20]
    assert np.array_equal(test, reference_split(targets, test_fraction=0.2, seed=42))


def test_speaker_majority_baseline() -> None:
    """Known speakers get their majority training label; unknown ones the overall majority."""
    groups = ["s1", "s1", "s1", "s2", "s2", "s2"]
    pred = speaker_majority(groups, np.array([2, 2, 1, 0, 0, 0]), ["s1", "s3"])
    assert pred.tolist() == [2, 0]


def test_group_ids_from_urdu_names() -> None:
    """The default regex takes the speaker id from URDU file names; a mismatch is a DataError."""
    clips = [Clip(Path("SM1_F10_A010.wav"), "Angry"), Clip(Path("SF12_F3_S001.wav"), "Sad")]
    assert group_ids(clips) == ["SM1", "SF12"]
    with pytest.raises(DataError, match="does not match"):
        group_ids([Clip(Path("clip.wav"), "Sad")])


def test_plot_confusion_writes_png(tmp_path: Path) -> None:
    """The confusion matrix is written as a PNG file."""
    s = score(np.array([0, 1, 1]), np.array([0, 1, 0]), ("x", "y"))
    path = plot_confusion(s, tmp_path / "cm.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _urdu_shaped_dataset(root: Path) -> Path:
    """Generated audio in URDU-named label folders (no URDU audio is copied)."""
    for k, label in enumerate(URDU_LABELS):
        (root / label).mkdir(parents=True)
        for i in range(2):
            clip = speech_like(2.5, seed=10 * k + i, pitch_hz=100 + 60 * k)
            sf.write(root / label / f"SM{k}_F{i}_{label[0]}{i:03d}.wav", clip, 16000)
    return root


def test_evaluate_cli_bundled_with_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate` prints clip and window scores and writes PNGs and scores.json."""
    data = _urdu_shaped_dataset(tmp_path / "data")
    report = tmp_path / "report"
    assert main(["evaluate", "--data", str(data), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "clips: n=8" in out and "2 s windows, hop 1 s: n=16" in out
    assert "confusion (rows true, columns predicted)" in out
    assert (report / "confusion_clips.png").is_file()
    assert (report / "confusion_windows.png").is_file()
    assert (report / "scores.json").is_file()


def test_evaluate_unknown_label_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A label folder the model does not know is a one-line error, exit code 2."""
    data = _urdu_shaped_dataset(tmp_path / "data")
    (data / "Bored").mkdir()
    sf.write(data / "Bored" / "SM9_F1_B001.wav", tone(200, 1.0), 16000)
    assert main(["evaluate", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown label folder(s) Bored" in err


def test_evaluate_bundled_on_urdu(urdu_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled model scores far above chance on URDU (it was trained on it: not a test set)."""
    assert main(["evaluate", "--data", str(urdu_dir)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("clips:"))
    accuracy = float(line.split("accuracy=")[1].split()[0])
    assert accuracy > 0.6, line


@pytest.mark.slow
def test_speaker_crossval_on_urdu_subset(
    urdu_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short speaker-grouped crossval reports clip, window and lookup scores end to end."""
    import json

    out_json = tmp_path / "cv.json"
    code = main(
        [
            "crossval",
            "--data",
            str(urdu_dir),
            "--folds",
            "3",
            "--group",
            "speaker",
            "--limit",
            "120",
            "--epochs",
            "4",
            "--members",
            "1",
            "--seed",
            "1",
            "--fold-seed",
            "0",
            "--no-progress",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pooled: accuracy" in out and "speaker's-majority-label lookup" in out
    assert "averaged per clip" in out and "single 2 s windows" in out
    assert "fold seed 0, training seed 1" in out
    result = json.loads(out_json.read_text())
    assert result["pooled"]["n"] == result["n"] <= 120
    assert result["pooled_windows_avg"]["n"] == result["n"]
    assert result["pooled_windows"]["n"] >= result["n"]
    assert len(result["folds"]) == 3
    assert 0.0 <= result["pooled_baseline"]["accuracy"] <= 1.0
