"""Microphone capture: the callback driven directly, drop-oldest, overflows, device choice."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import sounddevice as sd
from conftest import TIMEOUT_S

from streamer.capture import (
    CaptureBuffer,
    CaptureConfig,
    InputDevice,
    MicrophoneSource,
    _input_devices,
    list_input_devices,
    resolve_input_device,
)
from streamer.errors import AudioError

DEVICES = [
    InputDevice(0, "HDA Intel PCH: ALC257 Analog (hw:0,0)", 2, 44100, False),
    InputDevice(3, "USB Headset Mic", 1, 48000, True),
    InputDevice(5, "USB Conference Mic", 4, 48000, False),
    InputDevice(7, "pulse", 32, 44100, False),
]


def flags(overflow: bool = False) -> sd.CallbackFlags:
    status = sd.CallbackFlags()
    status.input_overflow = overflow
    return status


def block(value: float, frames: int = 160, channels: int = 1) -> np.ndarray:
    return np.full((frames, channels), value, dtype=np.float32)


def test_callback_copies_and_counts_overflows() -> None:
    """The queued block is a copy (driver buffers are reused); overflow flags are counted."""
    buf = CaptureBuffer()
    data = block(0.5)
    buf.callback(data, 160, None, flags(overflow=True))
    data[:] = -1.0  # the driver overwrites its buffer
    buf.callback(block(0.25), 160, None, flags())
    assert buf.input_overflows == 1 and buf.blocks_dropped == 0
    first = buf.read(TIMEOUT_S)
    assert first is not None and first.shape == (160,) and np.all(first == 0.5)
    second = buf.read(TIMEOUT_S)
    assert second is not None and np.all(second == 0.25)


def test_full_queue_drops_oldest_and_counts() -> None:
    """With room for 3 blocks, 5 callbacks drop the 2 oldest; the newest 3 are read in order."""
    buf = CaptureBuffer(queue_blocks=3)
    for i in range(5):
        buf.callback(block(float(i)), 160, None, flags())
    buf.end()
    assert buf.blocks_dropped == 2 and buf.blocks_received == 5
    values = []
    while (got := buf.read(TIMEOUT_S)) is not None:
        values.append(float(got[0]))
    assert values == [2.0, 3.0, 4.0]


def test_multichannel_blocks_are_downmixed_on_read() -> None:
    """Stereo callback blocks come out as mono means."""
    buf = CaptureBuffer(channels=2)
    stereo = np.stack([np.full(160, 0.2, np.float32), np.full(160, 0.4, np.float32)], axis=1)
    buf.callback(stereo, 160, None, flags())
    got = buf.read(TIMEOUT_S)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_allclose(got, 0.3, rtol=1e-6)


def test_device_lost_surfaces_after_queued_blocks() -> None:
    """fail() (device gone) raises AudioError from read once the queued blocks are consumed."""
    buf = CaptureBuffer()
    buf.callback(block(0.1), 160, None, flags())
    buf.fail(AudioError("input device 'x' stopped delivering audio (disconnected?)"))
    assert buf.read(TIMEOUT_S) is not None
    with pytest.raises(AudioError, match="disconnected"):
        buf.read(TIMEOUT_S)


def test_stalled_device_is_an_error_not_a_hang() -> None:
    """No first block within start_timeout_s, or no next one within stall_timeout_s: AudioError."""
    buf = CaptureBuffer(stall_timeout_s=0.05, start_timeout_s=0.05)
    with pytest.raises(AudioError, match="no audio from the input device for 0.1 s"):
        buf.read()
    buf.callback(block(0.1), 160, None, flags())
    assert buf.read() is not None
    with pytest.raises(AudioError, match="no audio from the input device"):
        buf.read()


def test_async_iteration_raises_on_a_stall() -> None:
    """`async for` on a device that never delivers ends with AudioError, not a hang."""
    buf = CaptureBuffer(stall_timeout_s=0.05, start_timeout_s=0.05)

    async def consume() -> None:
        async for _ in buf:
            pass

    with pytest.raises(AudioError, match="no audio"):
        asyncio.run(asyncio.wait_for(consume(), TIMEOUT_S))


def test_async_iteration_with_callbacks_from_another_thread() -> None:
    """Blocks from an audio-like thread reach `async for` in order; end() finishes it."""
    buf = CaptureBuffer(queue_blocks=100)
    first_read = threading.Event()

    def audio_thread() -> None:
        first_read.wait(TIMEOUT_S)  # deliver while the consumer is waiting in the loop
        for i in range(20):
            buf.callback(block(float(i)), 160, None, flags())
        buf.end()

    async def consume() -> list[float]:
        thread = threading.Thread(target=audio_thread)
        thread.start()
        values = []
        try:
            async for got in buf:
                first_read.set()
                values.append(float(got[0]))
        finally:
            first_read.set()
            thread.join(TIMEOUT_S)
        return values

    buf.callback(block(-1.0), 160, None, flags())
    values = asyncio.run(asyncio.wait_for(consume(), TIMEOUT_S))
    assert values == [-1.0] + [float(i) for i in range(20)]


def test_async_iteration_raises_when_device_is_lost() -> None:
    """A device failure reported on another thread ends `async for` with AudioError."""
    buf = CaptureBuffer()

    async def consume() -> None:
        loop_ready = threading.Event()
        def lose_device() -> None:
            loop_ready.wait(TIMEOUT_S)
            buf.fail(AudioError("device gone"))

        thread = threading.Thread(target=lose_device)
        thread.start()
        try:
            buf.callback(block(0.0), 160, None, flags())
            async for _ in buf:
                loop_ready.set()
        finally:
            loop_ready.set()
            thread.join(TIMEOUT_S)

    with pytest.raises(AudioError, match="device gone"):
        asyncio.run(asyncio.wait_for(consume(), TIMEOUT_S))


def test_resolve_by_index_name_and_default() -> None:
    """Index, digit string, unique name part, exact name and the default all resolve."""
    assert resolve_input_device(5, DEVICES).index == 5
    assert resolve_input_device("0", DEVICES).index == 0
    assert resolve_input_device("headset", DEVICES).index == 3
    assert resolve_input_device("PULSE", DEVICES).index == 7
    assert resolve_input_device(None, DEVICES).index == 3
    no_default = [d for d in DEVICES if not d.is_default]
    assert resolve_input_device(None, no_default).index == 0


def test_ambiguous_and_unknown_devices_list_candidates() -> None:
    """An ambiguous name lists the matches; an unknown one lists every input."""
    with pytest.raises(AudioError, match=r"ambiguous.*3: USB Headset Mic; 5: USB Conference Mic"):
        resolve_input_device("usb", DEVICES)
    with pytest.raises(AudioError, match=r"no input device matches 'webcam'.*7: pulse"):
        resolve_input_device("webcam", DEVICES)
    with pytest.raises(AudioError, match=r"input device 9 not found.*0: HDA"):
        resolve_input_device(9, DEVICES)


def test_no_input_device_suggests_a_file_source() -> None:
    """With no inputs at all the error says so and suggests --source FILE."""
    with pytest.raises(AudioError, match=r"no input device found.*--source FILE"):
        resolve_input_device(None, [])


def test_device_records_from_portaudio_dicts() -> None:
    """PortAudio device dicts become InputDevice records; output-only devices are left out."""
    raw = [
        {"name": "out", "max_input_channels": 0, "default_samplerate": 48000.0, "hostapi": 0},
        {"name": "mic", "max_input_channels": 2, "default_samplerate": 44100.0, "hostapi": 0},
    ]
    assert _input_devices(raw, 1, ["ALSA"]) == [InputDevice(1, "mic", 2, 44100, True, "ALSA")]


def test_list_and_open_on_this_machine() -> None:
    """list_input_devices() returns records; with none, MicrophoneSource says use --source FILE."""
    devices = list_input_devices()
    assert all(isinstance(d, InputDevice) for d in devices)
    if devices:
        pytest.skip(f"this machine has input devices ({len(devices)}); the no-device path "
                    "is covered by test_no_input_device_suggests_a_file_source")
    with pytest.raises(AudioError, match=r"no input device found.*--source FILE"):
        MicrophoneSource(CaptureConfig())


def test_capture_config_names_a_bad_setting() -> None:
    """CaptureConfig refuses a bad block length, rate or queue size when made, naming it."""
    with pytest.raises(ValueError, match="block_s"):
        CaptureConfig(block_s=5.0)
    with pytest.raises(AudioError, match="4000 Hz.*8000..192000"):
        CaptureConfig(sample_rate_hz=4000)
    with pytest.raises(ValueError, match="queue_blocks"):
        CaptureConfig(queue_blocks=0)
    assert CaptureConfig(device="USB").name == "mic"
