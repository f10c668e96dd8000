"""The `analyze`, `export`, `run` and `devices` commands in-process: outputs and bad input,
utterance and alert files, refusing existing timelines, --append, the export session choice."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from server.cli import main
from server.hub import EventHub
from server.recorder import StoreRecorder
from server.session import ModelInfo
from server.store import TimelineStore, read_sessions
from streamer.events import StreamClosed, StreamOpened, WindowLabel
from streamer.protocol.timeline import columns, kind_columns, kind_path, read_timeline
from streamer.testing import speech_like
from tests.conftest import TINY_LABELS

INFO = ModelInfo(name="m", labels=TINY_LABELS, window_s=2.0, hop_s=0.5, sample_rate_hz=16000)


def write_speech(path: Path, *, rate_hz: int = 16000, channels: int = 1) -> Path:
    audio = np.concatenate([speech_like(3.0, rate_hz=rate_hz), np.zeros(rate_hz, np.float32)])
    sf.write(path, np.stack([audio] * channels, axis=1) if channels > 1 else audio, rate_hz)
    return path


def error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    last = err[-1]
    assert last.startswith(f"emotion-monitor {command}: error:") or last.startswith(
        "emotion-monitor: error:"
    ) or f"emotion-monitor {command}: error:" in last, err
    return last


def test_analyze_writes_rows_for_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            tiny_wav2vec2: Path) -> None:
    """analyze FILE FILE --out x.csv writes one row per window, stream names unique per file."""
    (tmp_path / "b").mkdir()
    first = write_speech(tmp_path / "call.wav")
    second = write_speech(tmp_path / "b" / "call.wav", rate_hz=44100, channels=2)
    out = tmp_path / "timeline.csv"
    code = main(["analyze", str(first), str(second), "--out", str(out),
                 "--model", str(tiny_wav2vec2), "--model-device", "cpu"])
    assert code == 0
    rows = read_timeline(out)
    assert tuple(rows[0]) == columns(TINY_LABELS)
    streams = {row["stream"] for row in rows}
    assert streams == {"call", "call-2"}
    for stream in streams:
        seqs = [row["seq"] for row in rows if row["stream"] == stream]
        assert seqs == list(range(len(seqs))) and seqs
    for row in rows:
        assert sum(row[f"p_{label}"] for label in TINY_LABELS) == pytest.approx(1.0, abs=1e-4)
    printed = capsys.readouterr().out
    assert f"wrote {len(rows)} window row(s) to {out}" in printed
    utterances = read_timeline(kind_path(out, "utterance"))
    assert {row["stream"] for row in utterances} == {"call", "call-2"}
    assert tuple(utterances[0]) == kind_columns("utterance", TINY_LABELS)
    assert f"wrote {len(utterances)} utterance row(s)" in printed
    assert not kind_path(out, "alert").exists()  # no --alert: no alert file


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "no such audio file"),
        ("empty", "no audio samples"),
        ("not-audio", "cannot read audio"),
        ("bad-channel", "channel 3 out of range"),
        ("bad-suffix", "unsupported timeline file suffix"),
        ("no-folder", "does not exist"),
        ("bad-window", "hop_s"),
    ],
)
def test_analyze_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, needle: str
) -> None:
    """Unreadable, empty or wrong input: exit 2, one line naming the problem, no output file."""
    good = write_speech(tmp_path / "good.wav")
    out = tmp_path / "out.csv"
    extra: list[str] = []
    audio = good
    if case == "missing":
        audio = tmp_path / "nope.wav"
    elif case == "empty":
        audio = tmp_path / "empty.wav"
        sf.write(audio, np.zeros(0, np.float32), 16000)
    elif case == "not-audio":
        audio = tmp_path / "text.wav"
        audio.write_text("hello")
    elif case == "bad-channel":
        extra = ["--channel", "3"]
    elif case == "bad-suffix":
        out = tmp_path / "out.txt"
    elif case == "no-folder":
        out = tmp_path / "missing" / "out.csv"
    elif case == "bad-window":
        extra = ["--window-s", "1.0", "--hop-s", "2.0"]
    code = main(["analyze", str(audio), "--out", str(out), *extra])
    assert code == 2
    line = error_line(capsys, "analyze")
    assert needle in line
    assert not out.exists()


def make_store(path: Path) -> None:
    """A store with two sessions written through the real hub."""

    async def session(windows: int) -> None:
        with TimelineStore(path) as store:
            async with EventHub(INFO, recorder=StoreRecorder(store)) as hub:
                for stream in ("a", "b"):
                    hub.publish_event(StreamOpened(stream, 16000, time.time()))
                    for seq in range(windows):
                        hub.publish_event(WindowLabel(
                            stream, seq, 0.5 * seq, 0.5 * seq + 2, time.time(),
                            (0.1, 0.2, 0.3, 0.4), "Sad", 0.4, "uncertain", 0.3))
                    hub.publish_event(StreamClosed(stream, 5.0, time.time()))

    asyncio.run(session(3))
    asyncio.run(session(2))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_writes_the_stored_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """export --all writes every stored window; --stream and --latest filter them."""
    store = tmp_path / "store.sqlite3"
    make_store(store)
    out = tmp_path / f"all{suffix}"
    assert main(["export", "--store", str(store), "--out", str(out), "--all"]) == 0
    rows = read_timeline(out)
    assert len(rows) == 2 * 3 + 2 * 2
    assert len({row["session"] for row in rows}) == 2
    assert rows[0]["p_Sad"] == 0.4 and rows[0]["smoothed_label"] == "uncertain"
    printed = capsys.readouterr().out
    assert f"wrote 10 window row(s) to {out}" in printed
    assert f"wrote 0 alert row(s) to {kind_path(out, 'alert')}" in printed
    out = tmp_path / f"latest-b{suffix}"
    assert main(["export", "--store", str(store), "--out", str(out), "--stream", "b",
                 "--latest"]) == 0
    assert [(row["stream"], row["seq"]) for row in read_timeline(out)] == [("b", 0), ("b", 1)]
    assert "wrote 2 window row(s)" in capsys.readouterr().out
    session = rows[0]["session"]
    out = tmp_path / f"one{suffix}"
    assert main(["export", "--store", str(store), "--out", str(out), "--session", session]) == 0
    assert {row["session"] for row in read_timeline(out)} == {session}


def test_export_twice_needs_append_and_never_doubles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second export into the same file exits 2 naming --append; with it no row repeats."""
    store = tmp_path / "store.sqlite3"
    make_store(store)
    out = tmp_path / "calls.csv"
    command = ["export", "--store", str(store), "--out", str(out), "--all"]
    assert main(command) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(command) == 2
    line = error_line(capsys, "export")
    assert "already exists" in line and "--append" in line
    assert out.read_bytes() == first
    assert main([*command, "--append"]) == 0
    assert out.read_bytes() == first
    printed = capsys.readouterr().out
    assert "wrote 0 window row(s)" in printed
    assert "left out 10 row(s) the timeline had already" in printed


def test_export_without_a_session_choice_lists_the_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --session, --latest or --all: exit 2 listing the store's sessions; two: argparse."""
    store = tmp_path / "store.sqlite3"
    make_store(store)
    out = tmp_path / "out.csv"
    assert main(["export", "--store", str(store), "--out", str(out)]) == 2
    line = error_line(capsys, "export")
    assert "--session ID, --latest or --all" in line and "2 session(s)" in line
    for session in read_sessions(store):
        assert session.session in line
    assert not out.exists()
    with pytest.raises(SystemExit) as info:
        main(["export", "--store", str(store), "--out", str(out), "--latest", "--all"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_export_bad_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing store, a file that is not a store, and an unknown session: exit 2."""
    out = str(tmp_path / "out.csv")
    assert main(["export", "--store", str(tmp_path / "nope.sqlite3"), "--out", out,
                 "--all"]) == 2
    assert "no such timeline store" in error_line(capsys, "export")
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("not a database, just text " * 100)
    assert main(["export", "--store", str(junk), "--out", out, "--latest"]) == 2
    assert "not a timeline store" in error_line(capsys, "export")
    store = tmp_path / "store.sqlite3"
    make_store(store)
    assert main(["export", "--store", str(store), "--out", out, "--session", "zzz"]) == 2
    assert "no session 'zzz'" in error_line(capsys, "export")


def test_analyze_refuses_an_existing_timeline_and_appends_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model bundled works; a second analyze exits 2 naming --append; --append adds a run."""
    wav = write_speech(tmp_path / "call.wav")
    out = tmp_path / "t.jsonl"
    command = ["analyze", str(wav), "--out", str(out), "--model", "bundled",
               "--model-device", "cpu"]
    assert main(command) == 0
    first = read_timeline(out)
    assert first and len({row["session"] for row in first}) == 1
    capsys.readouterr()
    assert main(command) == 2
    line = error_line(capsys, "analyze")
    assert "already exists" in line and "--append" in line
    assert read_timeline(out) == first
    assert main([*command, "--append"]) == 0
    rows = read_timeline(out)
    assert rows[: len(first)] == first and len(rows) == 2 * len(first)
    assert len({row["session"] for row in rows}) == 2  # each run is its own session
    assert len(read_timeline(kind_path(out, "utterance"))) == 2


def test_analyze_alert_rules_write_the_alert_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--alert rules give OUT.alerts.csv with each alert's start and end; bad labels exit 2."""
    wav = write_speech(tmp_path / "call.wav")
    out = tmp_path / "t.csv"
    base = ["analyze", str(wav), "--model", "bundled", "--model-device", "cpu"]
    assert main([*base, "--out", str(out), "--alert", "angry>=0", "--alert", "sad>=1.0"]) == 0
    alerts = read_timeline(kind_path(out, "alert"))
    assert [(a["alert_id"], a["state"], a["rule"]) for a in alerts] == [
        (1, "start", "Angry>=0 for 0s"), (1, "end", "Angry>=0 for 0s")]
    windows = read_timeline(out)
    assert alerts[0]["at_s"] == windows[0]["end_s"]  # the first window starts it
    assert alerts[1]["at_s"] == windows[-1]["end_s"]  # the stream's close ends it
    assert "wrote 2 alert row(s)" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "u.csv"), "--alert", "bored>=0.5"]) == 2
    assert "unknown label 'bored'" in error_line(capsys, "analyze")


def test_run_port_in_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 tiny_wav2vec2: Path) -> None:
    """run on a port that is taken: exit 2 with one line saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["run", "--source", "none", "--port", str(port), "--no-store",
                     "--model", str(tiny_wav2vec2), "--model-device", "cpu"])
    assert code == 2
    assert "already in use" in error_line(capsys, "run")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--source", "missing.wav"], "no such audio file"),
        (["--source", "mic", "--device", "no-such-device-xyz"], "device"),
        (["--port", "70000"], "port must be"),
        (["--store", "missing/store.sqlite3"], "does not exist"),
        (["--hop-s", "0"], "hop_s"),
        (["--max-batch", "0"], "max_batch"),
    ],
)
def test_run_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], needle: str
) -> None:
    """Bad run arguments (file, device, port, store folder, windows): exit 2 and one line."""
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--port", "0", *args])
    assert code == 2
    assert needle in error_line(capsys, "run")


def test_run_without_input_device_suggests_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """run --source mic with no input device at all exits 2 and suggests --source FILE."""
    from streamer.capture import list_input_devices
    from streamer.errors import AudioError

    try:
        devices = list_input_devices()
    except AudioError:
        devices = []
    if devices:
        pytest.skip(f"this machine has input devices ({devices[0].name}); nothing to test")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--source", "mic", "--port", "0", "--no-store"]) == 2
    line = error_line(capsys, "run")
    assert "--source FILE" in line


def test_devices_lists_or_says_none(capsys: pytest.CaptureFixture[str]) -> None:
    """devices prints a table of inputs, or says none were found."""
    code = main(["devices"])
    captured = capsys.readouterr()
    if code == 2:  # no PortAudio library at all: still one clear line
        assert "audio devices" in captured.err
        return
    assert code == 0
    assert "no input devices found" in captured.out or captured.out.startswith("index")
