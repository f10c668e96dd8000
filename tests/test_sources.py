"""File source: any rate, multi-channel downmix or channel choice, pacing, bad files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.errors import AudioError
from streamer.sources import FileSource
from streamer.testing import tone


def write_stereo(path: Path, rate: int = 44100, seconds: float = 1.0) -> np.ndarray:
    """Left: 440 Hz tone; right: silence. Returns the frames x 2 data written."""
    left = tone(440, seconds, rate_hz=rate)
    data = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(path, data, rate, subtype="FLOAT")
    return data


def test_multichannel_file_is_downmixed(tmp_path: Path) -> None:
    """A 44.1 kHz stereo file yields mono blocks of block_s at 44.1 kHz: the channel mean."""
    path = tmp_path / "call.wav"
    data = write_stereo(path)
    with FileSource(path, realtime=False, block_s=0.1) as source:
        assert (source.sample_rate_hz, source.channels, source.name) == (44100, 2, "call")
        blocks = list(source)
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert blocks[0].size == 4410
    np.testing.assert_allclose(np.concatenate(blocks), data.mean(axis=1), atol=1e-7)


def test_channel_selection(tmp_path: Path) -> None:
    """channel=1 picks the silent right channel, channel=0 the tone."""
    path = tmp_path / "call.wav"
    data = write_stereo(path)
    with FileSource(path, channel=1, realtime=False) as right:
        assert not np.any(np.concatenate(list(right)))
    with FileSource(path, channel=0, realtime=False) as left:
        np.testing.assert_array_equal(np.concatenate(list(left)), data[:, 0])


def test_async_iteration_matches_sync(tmp_path: Path) -> None:
    """`async for` yields the same blocks as the sync iterator."""
    path = tmp_path / "mono.flac"
    sf.write(path, tone(300, 0.5, rate_hz=22050), 22050)

    async def collect() -> list[np.ndarray]:
        with FileSource(path, realtime=False) as source:
            return [block async for block in source]

    with FileSource(path, realtime=False) as source:
        sync_blocks = list(source)
    async_blocks = asyncio.run(collect())
    np.testing.assert_array_equal(np.concatenate(sync_blocks), np.concatenate(async_blocks))


def test_realtime_pacing_follows_a_start_clock(tmp_path: Path) -> None:
    """Block due times come from one start clock; a consumer behind schedule never waits."""
    path = tmp_path / "mono.wav"
    sf.write(path, tone(300, 1.0, rate_hz=16000), 16000)
    readings = iter([100.0] + [110.0] * 10)  # start, then the clock is far past the end
    with FileSource(path, realtime=True, block_s=0.25, clock=lambda: next(readings)) as source:
        assert [source.due_s(n) for n in (4000, 16000)] == [0.25, 1.0]
        blocks = list(source)
    assert [b.size for b in blocks] == [4000] * 4


def test_missing_empty_and_garbage_files(tmp_path: Path) -> None:
    """Missing, zero-length and non-audio files raise AudioError naming the file."""
    with pytest.raises(AudioError, match="no such audio file"):
        FileSource(tmp_path / "nope.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        FileSource(empty)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="garbage.wav: cannot read audio"):
        FileSource(garbage)


def test_bad_channel_and_rate(tmp_path: Path) -> None:
    """A channel the file lacks, or a rate below 8 kHz, raise AudioError with allowed values."""
    path = tmp_path / "call.wav"
    write_stereo(path)
    with pytest.raises(AudioError, match=r"channel 2 out of range.*allowed 0..1"):
        FileSource(path, channel=2)
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(4000, dtype=np.float32), 4000)
    with pytest.raises(AudioError, match="4000 Hz.*8000..192000"):
        FileSource(low)


def test_close_is_idempotent(tmp_path: Path) -> None:
    """close() twice is fine; iterating a closed source raises AudioError."""
    path = tmp_path / "mono.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    source = FileSource(path, realtime=False)
    source.close()
    source.close()
    with pytest.raises(AudioError, match="closed"):
        list(source)


def test_urdu_clip_streams_through(urdu_dir: Path) -> None:
    """A real URDU clip (read from ../shared) streams as mono blocks covering the whole file."""
    clip = sorted((urdu_dir / "Angry").glob("*.wav"))[0]
    with FileSource(clip, realtime=False) as source:
        total = sum(block.size for block in source)
        assert total == source.frames
