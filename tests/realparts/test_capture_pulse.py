"""Capture through a real audio server: a private PulseAudio with a virtual microphone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TIMEOUT_S

from streamer.testing import tone

from .audio import assemble, read_mono, silence_wav
from .monitor import Monitor, Recorder, store_windows
from .procs import OutputProcess, monitor_command, wait_until
from .pulse import PulseServer, play

pytestmark = pytest.mark.slow


def wait_capturing(pulse: PulseServer, monitor: Monitor, tmp_path: Path) -> None:
    """Block until the monitor records from the server and blocks flow through the sink.

    A recording stream shows up in PulseAudio once the monitor opened the device; a short
    silent lead-in played through the sink then returns only after it has been rendered,
    so capture is flowing when the test audio starts.
    """
    wait_until(
        lambda: pulse.source_outputs() or not monitor.running(),
        timeout_s=TIMEOUT_S, what="the monitor to open the virtual microphone",
    )
    assert monitor.running(), monitor.output()
    play(pulse, silence_wav(tmp_path / "lead-in.wav", 0.5))


async def record_while_playing(
    monitor: Monitor, pulse: PulseServer, wavs: list[Path], *, until_windows: int = 1
) -> Recorder:
    """Connect a WebSocket client, play the files in, wait for the speech to be labelled."""
    recorder = Recorder()
    task = asyncio.create_task(recorder.run(monitor.ws_url))
    try:
        await recorder.wait_for(
            lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S, what="hello"
        )
        for wav in wavs:
            await asyncio.to_thread(play, pulse, wav)

        def labelled(r: Recorder) -> bool:
            starts, ends = len(r.of("speech_start")), len(r.of("speech_end"))
            return len(r.windows()) >= until_windows and starts >= 1 and ends == starts

        await recorder.wait_for(
            labelled, timeout_s=TIMEOUT_S * 2, what="windows and the final speech_end"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return recorder


def check_speech_events(recorder: Recorder) -> None:
    """speech_start before the first window, labels from the hello, seq increasing per stream."""
    hello = recorder.of("hello")[0]
    labels = set(hello["labels"])
    kinds = [m["type"] for m in recorder.messages]
    assert "speech_start" in kinds and "speech_end" in kinds, kinds
    assert kinds.index("speech_start") < kinds.index("window"), kinds
    seqs: dict[str, list[int]] = {}
    for window in recorder.windows():
        assert window["label"] in labels, window
        assert window["smoothed_label"] in labels | {"uncertain"}, window
        assert set(window["probabilities"]) == labels, window
        assert sum(window["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert window["end_s"] > window["start_s"], window
        seqs.setdefault(window["stream"], []).append(int(window["seq"]))
    for stream, numbers in seqs.items():
        assert numbers == sorted(set(numbers)), f"{stream}: sequence numbers {numbers}"


def test_virtual_microphone_returns_played_audio(
    pulse_server: PulseServer, tmp_path: Path
) -> None:
    """A tone played into the null sink comes back through sounddevice at its pitch."""
    wav = tmp_path / "tone.wav"
    sf.write(str(wav), tone(440.0, 1.0, rate_hz=48000), 48000, subtype="PCM_16")
    out = tmp_path / "captured.wav"
    recorder = OutputProcess(
        [sys.executable, str(Path(__file__).with_name("recorder_child.py")), str(out),
         "48000", "1.5", str(TIMEOUT_S)],
        env=pulse_server.env, log_path=tmp_path / "recorder.log",
    )
    with recorder:
        recorder.wait_for("^recording$", timeout_s=TIMEOUT_S)
        play(pulse_server, wav)
        assert recorder.wait_exit(timeout_s=TIMEOUT_S * 2) == 0, recorder.output()
    captured = read_mono(out, 48000)
    loud = captured[np.abs(captured) > 0.05]
    assert loud.size > 0.5 * 48000, "less than half of the 1 s tone came back"
    spectrum = np.abs(np.fft.rfft(captured))
    peak_hz = np.argmax(spectrum) * 48000 / captured.size
    assert peak_hz == pytest.approx(440.0, abs=5.0)
    # The tone dies out: no feedback loop inside the audio server.
    assert float(np.max(np.abs(captured[-4800:]))) < 0.01


def test_devices_lists_the_pulse_device(pulse_server: PulseServer) -> None:
    """`emotion-monitor devices` lists PulseAudio's input device."""
    result = subprocess.run(
        monitor_command("devices"), env=pulse_server.env, cwd=REPO,
        capture_output=True, text=True, timeout=TIMEOUT_S * 2,
    )
    assert result.returncode == 0, result.stderr
    assert "pulse" in result.stdout.lower(), result.stdout


def test_run_captures_spoken_sentences(
    pulse_server: PulseServer, start_monitor: Any, speech_wav: Path, tmp_path: Path
) -> None:
    """Speech played into the virtual microphone reaches a WebSocket client as labelled windows."""
    monitor = start_monitor(
        ["--port", "0", "--store", str(tmp_path / "timeline.sqlite3")], env=pulse_server.env
    )
    wait_capturing(pulse_server, monitor, tmp_path)
    recorder = asyncio.run(record_while_playing(monitor, pulse_server, [speech_wav]))
    check_speech_events(recorder)
    # Three sentences of about 4 s: several windows each, not one per file.
    assert len(recorder.windows()) >= 3, [m["type"] for m in recorder.messages]


def test_run_captures_an_urdu_clip(
    pulse_server: PulseServer, start_monitor: Any, urdu_dir: Path, tmp_path: Path
) -> None:
    """A URDU recording played into the virtual microphone is labelled with the model's labels."""
    clip = sorted((urdu_dir / "Angry").glob("*.wav"))[0]
    wav = assemble([clip], tmp_path / "urdu.wav", rate_hz=44100, lead_s=0.3, tail_s=1.5)
    monitor = start_monitor(
        ["--port", "0", "--store", str(tmp_path / "timeline.sqlite3")], env=pulse_server.env
    )
    wait_capturing(pulse_server, monitor, tmp_path)
    recorder = asyncio.run(record_while_playing(monitor, pulse_server, [wav]))
    check_speech_events(recorder)


def test_silence_yields_no_labels(
    pulse_server: PulseServer, start_monitor: Any, sentence_wav: Path, tmp_path: Path
) -> None:
    """Silence played in gives no speech events and no windows; speech afterwards still does."""
    monitor = start_monitor(["--port", "0", "--no-store"], env=pulse_server.env)
    wait_capturing(pulse_server, monitor, tmp_path)
    silence = silence_wav(tmp_path / "silence.wav", 4.0)

    async def scenario() -> tuple[list[str], Recorder]:
        recorder = Recorder()
        task = asyncio.create_task(recorder.run(monitor.ws_url))
        try:
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello")
            await asyncio.to_thread(play, pulse_server, silence)
            # Whatever the silence produced has been sent once the engine reports stats
            # twice after it was played (stats come from the same loop, in order).
            seen = len(recorder.of("stats"))
            await recorder.wait_for(lambda r: len(r.of("stats")) >= seen + 2,
                                    timeout_s=TIMEOUT_S, what="two stats messages")
            during_silence = [m["type"] for m in recorder.messages]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return during_silence, recorder

    during_silence, _ = asyncio.run(scenario())
    assert "window" not in during_silence, during_silence
    assert "speech_start" not in during_silence, during_silence
    # Positive control: the same monitor labels speech played right after.
    recorder = asyncio.run(record_while_playing(monitor, pulse_server, [sentence_wav]))
    check_speech_events(recorder)


def test_losing_the_audio_server_is_reported_and_store_kept(
    private_pulse_server: PulseServer, start_monitor: Any, sentence_wav: Path, tmp_path: Path
) -> None:
    """Killing PulseAudio mid-run: one clear error line, no hang, the store keeps the windows."""
    store = tmp_path / "timeline.sqlite3"
    pulse = private_pulse_server
    monitor = start_monitor(["--port", "0", "--store", str(store)], env=pulse.env)
    wait_capturing(pulse, monitor, tmp_path)

    async def scenario() -> Recorder:
        recorder = Recorder()
        task = asyncio.create_task(recorder.run(monitor.ws_url))
        try:
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello")
            await asyncio.to_thread(play, pulse, sentence_wav)
            await recorder.wait_for(lambda r: len(r.windows()) >= 1 and bool(r.of("speech_end")),
                                    timeout_s=TIMEOUT_S * 2, what="windows and speech_end")
            pulse.kill()
            # Documented (docs/protocol.md): the stream closes with reason "error"; the
            # monitor then stops and closes its clients.
            await recorder.wait_for(lambda r: r.closed, timeout_s=TIMEOUT_S * 2,
                                    what="the monitor to close the connection")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return recorder

    recorder = asyncio.run(scenario())
    closes = recorder.of("stream_close")
    assert [c["reason"] for c in closes] == ["error"], closes
    # Documented (server/cli.py): an error a user can fix is one line and exit code 2.
    code = monitor.process.wait_exit(timeout_s=TIMEOUT_S * 2)
    stderr = monitor.process.stderr
    assert code == 2, monitor.output()
    assert not any("Traceback" in line for line in stderr), monitor.output()
    assert stderr[-1].startswith("emotion-monitor run: error: "), monitor.output()
    assert "device" in stderr[-1], stderr[-1]
    received = recorder.keys()
    assert received and received <= store_windows(store, session=recorder.session())
