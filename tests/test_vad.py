"""VAD gate: onset/hangover padding, trigger, energy floor, flush, config validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamer.errors import AudioError
from streamer.testing import speech_like, tone
from streamer.vad import GateClosed, GatedAudio, GateOpened, VadConfig, VadGate

RATE = 16000
FRAME_S = 0.03


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def run_gate(audio: np.ndarray, config: VadConfig, block: int = 1234) -> list:
    gate = VadGate(config)
    items: list = []
    for i in range(0, audio.size, block):
        items += gate.push(audio[i : i + block])
    return items + gate.flush()


def segments(items: list) -> list[tuple[float, float]]:
    return [(it.start_s, it.end_s) for it in items if isinstance(it, GateClosed)]


def test_onset_and_hangover_padding_around_bursts() -> None:
    """Segments start onset_ms before and end hangover_ms after each burst, within two frames."""
    cfg = VadConfig(onset_ms=300, hangover_ms=300)
    audio = np.concatenate(
        [silence(1.0), speech_like(1.5), silence(2.0), speech_like(1.0, seed=1), silence(1.5)]
    )
    segs = segments(run_gate(audio, cfg))
    truth = [(1.0, 2.5), (4.5, 5.5)]
    assert len(segs) == 2
    for (start, end), (t0, t1) in zip(segs, truth, strict=True):
        assert abs(start - (t0 - 0.3)) <= 2 * FRAME_S
        assert abs(end - (t1 + 0.3)) <= 2 * FRAME_S


def test_gated_audio_is_contiguous_and_matches_the_stream() -> None:
    """Gated samples carry exact stream times: each equals the input at that time."""
    audio = np.concatenate([silence(0.7), speech_like(1.2), silence(1.0)])
    items = run_gate(audio, VadConfig())
    opened = [it for it in items if isinstance(it, GateOpened)]
    chunks = [it for it in items if isinstance(it, GatedAudio)]
    assert len(opened) == 1 and chunks
    expected_start = round(opened[0].start_s * RATE)
    for chunk in chunks:
        start = round(chunk.start_s * RATE)
        assert start == expected_start
        np.testing.assert_array_equal(chunk.samples, audio[start : start + chunk.samples.size])
        expected_start = start + chunk.samples.size
    closed = segments(items)[0]
    assert round(closed[1] * RATE) == expected_start


def test_items_come_in_order_open_audio_close() -> None:
    """Each segment is GateOpened, then its audio, then GateClosed."""
    audio = np.concatenate([silence(0.5), speech_like(0.8), silence(1.0), speech_like(0.8)])
    kinds = [type(it).__name__ for it in run_gate(audio, VadConfig(), block=480)]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed == ["GateOpened", "GatedAudio", "GateClosed"] * 2


def test_block_size_does_not_change_the_result() -> None:
    """The same audio pushed in different block sizes gives the same segments."""
    audio = np.concatenate([silence(0.4), speech_like(1.0), silence(0.9), speech_like(0.6)])
    assert segments(run_gate(audio, VadConfig(), 100)) == segments(
        run_gate(audio, VadConfig(), 16000)
    )


def test_pause_shorter_than_hangover_stays_in_one_segment() -> None:
    """A 0.2 s pause inside speech does not split the segment when hangover is 0.3 s."""
    audio = np.concatenate([silence(0.5), speech_like(1.0), silence(0.2), speech_like(1.0, seed=3),
                            silence(1.0)])
    assert len(segments(run_gate(audio, VadConfig(hangover_ms=300)))) == 1


def test_zero_padding_tracks_the_bursts_closely() -> None:
    """With no onset or hangover padding the segment hugs the burst (within two frames)."""
    audio = np.concatenate([silence(0.6), speech_like(1.2), silence(0.9)])
    (seg,) = segments(run_gate(audio, VadConfig(onset_ms=0, hangover_ms=0, trigger_ms=30)))
    assert abs(seg[0] - 0.6) <= 2 * FRAME_S and abs(seg[1] - 1.8) <= 2 * FRAME_S


def test_click_shorter_than_trigger_does_not_open() -> None:
    """A single 30 ms burst does not open the gate when trigger_ms is 90."""
    audio = np.concatenate([silence(0.6), speech_like(0.03), silence(0.6)])
    assert segments(run_gate(audio, VadConfig(trigger_ms=90))) == []


def test_silence_and_near_silence_never_open() -> None:
    """Digital silence and -66 dBFS noise stay below the energy floor at every aggressiveness."""
    rng = np.random.default_rng(1)
    quiet = (0.0005 * rng.standard_normal(3 * RATE)).astype(np.float32)
    for aggressiveness in range(4):
        cfg = VadConfig(aggressiveness=aggressiveness)
        assert segments(run_gate(silence(3.0), cfg)) == []
        assert segments(run_gate(quiet, cfg)) == []


def test_energy_floor_gates_a_quiet_tone() -> None:
    """webrtcvad calls a tone speech; a floor above its level keeps the gate shut."""
    quiet_tone = tone(200, 2.0, amplitude=0.01)  # about -43 dBFS RMS
    assert segments(run_gate(quiet_tone, VadConfig(energy_floor_dbfs=None)))
    assert segments(run_gate(quiet_tone, VadConfig(energy_floor_dbfs=-40.0))) == []


def test_onset_never_reaches_before_stream_or_previous_segment() -> None:
    """Pre-roll is clipped at the stream start and at the previous segment's end."""
    audio = np.concatenate([speech_like(0.6), silence(0.35), speech_like(0.6, seed=2),
                            silence(1.0)])
    segs = segments(run_gate(audio, VadConfig(onset_ms=600, hangover_ms=300)))
    assert segs[0][0] == 0.0
    for (_, prev_end), (start, _) in zip(segs, segs[1:], strict=False):
        assert start >= prev_end


def test_flush_closes_an_open_segment_at_the_stream_end() -> None:
    """Speech running into the end of the stream is closed at the last sample."""
    audio = np.concatenate([silence(0.5), speech_like(1.01)])
    segs = segments(run_gate(audio, VadConfig()))
    assert len(segs) == 1
    assert segs[0][1] == pytest.approx(audio.size / RATE)


@pytest.mark.parametrize(
    ("field", "value"),
    [("aggressiveness", 4), ("frame_ms", 25), ("onset_ms", -1), ("hangover_ms", 99999),
     ("energy_floor_dbfs", 3.0)],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    """Out-of-range settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        VadConfig(**{field: value})


def test_rejects_wrong_dtype() -> None:
    """int16 blocks are refused with AudioError."""
    with pytest.raises(AudioError, match="float32"):
        VadGate().push(np.zeros(480, dtype=np.int16))  # type: ignore[arg-type]
