"""Several corpora: loading, balanced training, leave-one-corpus-out, and refused bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TIMEOUT_S
from numpy.typing import NDArray

from server.cli import main
from streamer.errors import DataError
from streamer.offline.dataset import load_corpora, resolve_corpora
from streamer.testing import speech_like

CORPORA_DIR = Path(
    os.environ.get("EMOTION_MONITOR_CORPORA", REPO.parent / "shared" / "data" / "corpora")
)
# Each generated corpus has its own "channel" (gain and a steady hum) and a speaker prefix; the
# last one lacks a class, like TurEV-DB lacks Neutral.
GEN_CORPORA = {
    "alpha": {"gain": 1.0, "hum_hz": 0.0, "labels": ("Angry", "Happy", "Sad")},
    "beta": {"gain": 0.3, "hum_hz": 50.0, "labels": ("Angry", "Happy", "Sad")},
    "gamma": {"gain": 0.6, "hum_hz": 120.0, "labels": ("Angry", "Sad")},
}


def _clip(label: str, rng: np.random.Generator, gain: float, hum_hz: float) -> NDArray[np.float32]:
    """A 1.5-2 s clip whose class shows in spectrum and rhythm, through the corpus's channel."""
    seconds = float(rng.uniform(1.5, 2.0))
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    if label == "Happy":
        pitch = float(rng.uniform(180, 240))
        x = speech_like(seconds, seed=int(rng.integers(1 << 30)), pitch_hz=pitch)
    elif label == "Sad":
        f = float(rng.uniform(2000, 3000))
        gate = np.sin(2 * np.pi * float(rng.uniform(1.5, 2.5)) * t) > 0
        x = 0.3 * np.sin(2 * np.pi * f * t) * gate + 0.01 * rng.standard_normal(n)
    else:
        am = 0.6 + 0.4 * np.sin(2 * np.pi * float(rng.uniform(6, 10)) * t)
        x = 0.2 * rng.standard_normal(n) * am
    x = gain * x + (0.05 * np.sin(2 * np.pi * hum_hz * t) if hum_hz else 0.0)
    return np.asarray(x, dtype=np.float32)


def make_corpora(root: Path, per_class: int = 10, *, seed: int = 0) -> Path:
    """Write three small corpora under ``root`` (a folder of corpora), speakers s0-s2 each."""
    rng = np.random.default_rng(seed)
    for name, spec in GEN_CORPORA.items():
        for label in spec["labels"]:  # type: ignore[attr-defined]
            folder = root / name / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                clip = _clip(label, rng, float(spec["gain"]), float(spec["hum_hz"]))  # type: ignore[arg-type]
                sf.write(folder / f"s{i % 3}_{label.lower()}_{i:02d}.wav", clip, 16000)
    return root


@pytest.fixture(scope="module")
def gen_corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated corpora with distinct channels; gamma has no Happy."""
    return make_corpora(tmp_path_factory.mktemp("corpora"))


SPEAKERS = ["--group-regex", r"^(s\d)_"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_folder_of_corpora_loads_with_corpus_and_speaker_of_each_clip(gen_corpora: Path) -> None:
    """A folder of corpora is every corpus in it; clips know their corpus and speaker."""
    specs = resolve_corpora([gen_corpora], default_regex=r"^(s\d)_")
    assert [s.name for s in specs] == ["alpha", "beta", "gamma"]
    data = load_corpora(specs)
    assert data.labels == ("Angry", "Happy", "Sad")
    assert data.corpus_names == ("alpha", "beta", "gamma")
    assert len(data) == 80
    assert data.speakers is not None and data.speakers[0] == "alpha/s0"
    gamma = data.corpus_names.index("gamma")
    assert data.corpus_labels(gamma) == (0, 2)
    single = resolve_corpora([gen_corpora / "alpha", gen_corpora / "beta"])
    assert [s.speaker_regex for s in single] == [None, None]  # unknown corpora: no default


def test_known_corpora_get_their_speaker_regex(tmp_path: Path) -> None:
    """The six shipped corpora are recognised by folder name, URDU case-insensitively."""
    for name in ("urdu", "TESS", "nEMO"):
        (tmp_path / name / "Angry").mkdir(parents=True)
        sf.write(tmp_path / name / "Angry" / "x.wav", np.zeros(1600, np.float32), 16000)
    specs = {s.name: s.speaker_regex for s in resolve_corpora([tmp_path])}
    assert specs["URDU"] == r"^(S[MF]\d+)_"
    assert specs["TESS"] == r"^([OY])AF?_"
    assert specs["nEMO"] == r"^([A-Z]{2}\d)_"


def test_train_on_several_corpora_saves_a_model_of_their_labels(
    gen_corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Repeated --data, per-corpus speaker regexes and phone-line augmentation train one model."""
    out = tmp_path / "model"
    code = main(
        ["train", "--data", str(gen_corpora / "alpha"), "--data", str(gen_corpora / "gamma"),
         "--speaker-regex", r"alpha=^(s\d)_", "--speaker-regex", r"gamma=^(s\d)_",
         "--out", str(out), "--epochs", "2", "--phone-prob", "0.5", "--no-progress"]
    )
    assert code == 0
    assert "from 2 corpora" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert list(config["id2label"].values()) == ["Angry", "Happy", "Sad"]


def test_leave_one_corpus_out_scores_held_out_corpora_above_chance(
    gen_corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each corpus held out in turn scores well above chance, at 16 kHz and through the phone
    line; the table shows recall and predicted shares; --json has every fold."""
    out_json = tmp_path / "loco.json"
    code = main(
        ["crossval", "--data", str(gen_corpora), *SPEAKERS, "--group", "corpus",
         "--epochs", "12", "--phone", "mulaw", "--phone-prob", "0.3", "--no-progress",
         "--json", str(out_json)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "leave-one-corpus-out over 3 corpora" in out
    assert "P_Ang" in out and "R_Sad" in out and "through the phone line" in out
    result = json.loads(out_json.read_text())
    assert result["complete"] is True
    assert [f["name"] for f in result["folds"]] == ["alpha", "beta", "gamma"]
    for fold in result["folds"]:
        assert fold["model"]["uar"] > 0.6, fold["name"]
        assert fold["phone"]["model"]["uar"] > 0.5, fold["name"]
        assert len(fold["predictions"]["probs"]) == fold["model"]["n"]
    gamma = result["folds"][2]
    assert gamma["model"]["recall"]["Happy"] is None  # gamma has no Happy clips
    assert result["uar_mean"] > 0.6

    # calibrate: one temperature fitted on those held-out predictions lowers their NLL
    model = tmp_path / "model"
    main(["train", "--data", str(gen_corpora), *SPEAKERS, "--out", str(model), "--epochs", "1",
          "--no-progress"])
    capsys.readouterr()
    report = tmp_path / "calibration.json"
    assert main(["calibrate", "--crossval-json", str(out_json), "--model", str(model),
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "fitted temperature" in out and "observed accuracy" in out
    figures = json.loads(report.read_text())
    for side in ("16 kHz", "phone line"):
        row = figures["sides"][side]
        assert row["nll_after"] <= row["nll_before"] + 1e-9
        assert 0 <= row["ece_after"] <= 1 and 0 <= row["ece_after_other_folds_t"] <= 1
    config = json.loads((model / "config.json").read_text())
    assert config["logit_temperature"] == pytest.approx(figures["temperature"])


def test_calibrate_refuses_a_file_that_is_no_crossval_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate on anything but a crossval --json file: one line, exit 2."""
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    assert main(["calibrate", "--crossval-json", str(bad)]) == 2
    assert "not a 'crossval --json' file" in _one_line_error(capsys)


def test_speaker_folds_over_one_corpus_keep_the_others_in_training(
    gen_corpora: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--group speaker --test-corpus makes folds of that corpus's speakers only."""
    code = main(
        ["crossval", "--data", str(gen_corpora), *SPEAKERS, "--group", "speaker",
         "--test-corpus", "beta", "--folds", "3", "--epochs", "2", "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "over beta (other corpora always train)" in out
    assert "pooled: accuracy" in out and "(n=30)" in out


def test_json_keeps_finished_folds_when_a_run_is_cut_short(
    gen_corpora: Path, tmp_path: Path
) -> None:
    """Killing crossval after its first fold leaves a valid --json with that fold."""
    out_json = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "crossval", "--data", str(gen_corpora), *SPEAKERS,
         "--group", "corpus", "--epochs", "40", "--no-progress", "--json", str(out_json)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10 * TIMEOUT_S
        while not out_json.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out_json.exists(), "no fold finished"
    finally:
        proc.kill()
        proc.wait()
    result = json.loads(out_json.read_text())
    assert len(result["folds"]) >= 1
    assert result["complete"] is (len(result["folds"]) == 3)


def _bad(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    (root / "Angry").mkdir(parents=True)
    (root / "Sad").mkdir()
    for label in ("Angry", "Sad"):
        sf.write(root / label / f"p1_{label}.wav", speech_like(1.0), 16000)
    return root


def test_folder_without_label_folders_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder holding neither label folders nor corpora: one line, exit 2."""
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    (tmp_path / "empty" / "docs" / "README.md").write_text("no audio\n")
    code = main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no label folders with audio" in _one_line_error(capsys)


def test_misspelt_label_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Angyr`` is taken for a misspelling of Angry: one line naming both, exit 2."""
    root = _bad(tmp_path)
    (root / "Angry").rename(root / "Angyr")
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "o")])
    assert code == 2
    err = _one_line_error(capsys)
    assert "'Angyr'" in err and "'Angry'" in err


def test_label_aliases_map_and_unknown_labels_of_one_corpus_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``anger``/``sadness`` map to Angry/Sad; a label only one corpus has is refused."""
    a = _bad(tmp_path / "a")
    b = tmp_path / "b" / "corpus"
    for folder in ("anger", "sadness"):
        (b / folder).mkdir(parents=True)
        sf.write(b / folder / "p2_x.wav", speech_like(1.0, seed=2), 16000)
    data = load_corpora(resolve_corpora([a, b]))
    assert data.labels == ("Angry", "Sad") and len(data) == 4
    (b / "Bored").mkdir()
    sf.write(b / "Bored" / "p2_y.wav", speech_like(1.0, seed=3), 16000)
    code = main(["train", "--data", str(a), "--data", str(b), "--out", str(tmp_path / "o")])
    assert code == 2
    err = _one_line_error(capsys)
    assert "corpus corpus" in err and "'Bored'" in err and "no other corpus" in err


def test_speaker_regex_matching_no_file_names_the_corpus_and_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A speaker regex that matches nothing: one line with the corpus and a file name."""
    root = _bad(tmp_path)
    code = main(
        ["train", "--data", str(root), "--speaker-regex", r"bad=^(X\d)_", "--out",
         str(tmp_path / "o")]
    )
    assert code == 2
    err = _one_line_error(capsys)
    assert "corpus bad" in err and "matches no file name" in err and "p1_Angry.wav" in err
    code = main(
        ["crossval", "--data", str(root), "--speaker-regex", "bad", "--folds", "2"]
    )
    assert code == 2
    assert "NAME=REGEX" in _one_line_error(capsys)


def test_speaker_folds_need_speaker_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--group speaker on a corpus with no known speaker regex says which option to pass."""
    code = main(["crossval", "--data", str(_bad(tmp_path)), "--folds", "2"])
    assert code == 2
    assert "--speaker-regex bad=REGEX" in _one_line_error(capsys)


def test_unreadable_opus_file_is_skipped_and_named(
    gen_corpora: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt .ogg is skipped with a warning naming it; the rest loads."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(gen_corpora / "alpha", root / "alpha")
    (root / "alpha" / "Angry" / "broken.ogg").write_bytes(b"OggS" + bytes(200))
    data = load_corpora(resolve_corpora([root]))
    assert len(data) == 30 and len(data.skipped) == 1
    assert "broken.ogg" in caplog.text


def test_corpus_folds_need_two_corpora(gen_corpora: Path) -> None:
    """Leave-one-corpus-out on one corpus is a clear DataError."""
    from streamer.offline.crossval import corpus_folds

    with pytest.raises(DataError, match="at least 2 corpora"):
        corpus_folds(load_corpora(resolve_corpora([gen_corpora / "alpha"])))


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    """The shipped corpora; tests that need them skip, saying where they were looked for."""
    if not (CORPORA_DIR / "nEMO").is_dir():
        pytest.skip(f"corpora not found at {CORPORA_DIR} (set EMOTION_MONITOR_CORPORA)")
    return CORPORA_DIR


def test_bundled_model_through_the_phone_line_on_a_real_corpus(
    corpora_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate --phone mulaw`` scores the bundled model on a corpus it never saw."""
    code = main(
        ["evaluate", "--data", str(corpora_dir / "EmotionTTS-OpenDB-Korean"), "--phone", "mulaw",
         "--report", str(tmp_path / "report")]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "through a phone line (8 kHz G.711 mulaw)" in out and "predicted share" in out
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    assert scores["clips"]["n"] == 300
    assert 0.0 <= scores["clips"]["uar"] <= 1.0


@pytest.mark.slow
def test_short_leave_one_corpus_out_on_the_real_corpora(
    corpora_dir: Path, urdu_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short leave-one-corpus-out run over three real corpora (one without Neutral)
    completes, reports each one, and never scores the class a corpus lacks."""
    out_json = tmp_path / "loco.json"
    code = main(
        ["crossval", "--data", str(corpora_dir / "EmotionTTS-OpenDB-Korean"),
         "--data", str(corpora_dir / "TurEV-DB"), "--data", str(urdu_dir), "--group", "corpus",
         "--limit", "300", "--epochs", "2", "--max-epoch-steps", "10", "--phone", "mulaw",
         "--phone-prob", "0.5", "--no-progress", "--json", str(out_json)]
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    assert len(result["folds"]) == 3 and result["complete"]
    assert [f["name"] for f in result["folds"]] == ["EmotionTTS-OpenDB-Korean", "TurEV-DB", "URDU"]
    turev = result["folds"][1]
    assert turev["model"]["recall"]["Neutral"] is None
    assert turev["phone"]["model"]["n"] == turev["model"]["n"]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--phone-prob", "1.5", "phone_prob must be in [0, 1]"),
        ("--f-max-hz", "9000", "f_max_hz must be in [1000, 8000]"),
        ("--fft-size", "100", "fft_size must be in [200, 2048]"),
        ("--max-epoch-steps", "0", "max_epoch_steps must be >= 1"),
    ],
)
def test_bad_multi_corpus_training_options_exit_2(
    gen_corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    flag: str, value: str, words: str,
) -> None:
    """Out-of-range phone-line, band, window or step settings: one line, exit 2."""
    code = main(["train", "--data", str(gen_corpora), "--out", str(tmp_path / "o"), flag, value])
    assert code == 2
    assert words in _one_line_error(capsys)
