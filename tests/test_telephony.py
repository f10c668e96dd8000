"""The phone-line transform: G.711 codecs and the 8 kHz band limit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamer.errors import AudioError
from streamer.telephony import (
    G711_LAWS,
    alaw_decode,
    alaw_encode,
    mulaw_decode,
    mulaw_encode,
    phone_line,
)

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def _audioop():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python 3.13 removed it
            pytest.skip("audioop (the reference G.711 codec) is not in this Python")
    return audioop


@pytest.mark.parametrize(
    ("encode", "decode"), [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)]
)
def test_round_trip_within_quantisation_error(encode, decode) -> None:  # type: ignore[no-untyped-def]
    """Every 16-bit value survives encode/decode within its segment's step (G.711's error)."""
    back = decode(encode(ALL_PCM)).astype(np.int32)
    x = ALL_PCM.astype(np.int32)
    err = np.abs(back - x)
    # The step doubles per segment: at most 1/16 of the magnitude plus the smallest step.
    assert np.all(err <= np.abs(x) / 16 + 40)
    small = np.abs(x) < 64
    assert np.all(err[small] <= 8)


@pytest.mark.parametrize(
    ("encode", "decode"), [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)]
)
def test_decoded_codes_are_fixed_points(encode, decode) -> None:  # type: ignore[no-untyped-def]
    """Decoding then re-encoding each of the 256 codes gives the code back (up to signed zero)."""
    codes = np.arange(256, dtype=np.uint8)
    again = encode(decode(codes))
    same = decode(again) == decode(codes)
    assert np.all(same)


def test_codecs_match_the_reference_implementation() -> None:
    """mu-law and A-law are bit-exact with CPython's audioop on all 65,536 inputs and 256 codes."""
    audioop = _audioop()
    pcm = ALL_PCM.tobytes()
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(mulaw_encode(ALL_PCM), np.frombuffer(audioop.lin2ulaw(pcm, 2), np.uint8))
    assert np.array_equal(alaw_encode(ALL_PCM), np.frombuffer(audioop.lin2alaw(pcm, 2), np.uint8))
    ulin = np.frombuffer(audioop.ulaw2lin(codes.tobytes(), 2), np.int16)
    alin = np.frombuffer(audioop.alaw2lin(codes.tobytes(), 2), np.int16)
    assert np.array_equal(mulaw_decode(codes), ulin)
    assert np.array_equal(alaw_decode(codes), alin)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
@pytest.mark.parametrize("n", [1, 399, 16000, 32001])
def test_phone_line_keeps_length_and_dtype(law: str, n: int) -> None:
    """Output has the input's length and is float32 mono."""
    audio = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    out = phone_line(audio, law=law)
    assert out.shape == audio.shape and out.dtype == np.float32


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_phone_line_band_limits_below_4khz(law: str) -> None:
    """A 6 kHz tone is gone, a 1 kHz tone passes with its level (within 1 dB)."""
    t = np.arange(32000) / 16000
    low = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    high = (0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    mid = slice(4000, -4000)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x[mid], dtype=np.float64))))

    assert abs(20 * np.log10(rms(phone_line(low, law=law)) / rms(low))) < 1.0
    assert rms(phone_line(high, law=law)) < 0.01 * rms(high)
    noise = (0.2 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(phone_line(noise, law=law)[mid])) ** 2
    freqs = np.fft.rfftfreq(len(noise[mid]), 1 / 16000)
    above = spectrum[freqs > 4200].sum() / spectrum.sum()
    assert above < 1e-3


def test_phone_line_rejects_bad_input() -> None:
    """Unknown law, int16 or stereo input, or a rate under 8 kHz: one clear AudioError."""
    audio = np.zeros(1600, dtype=np.float32)
    with pytest.raises(AudioError, match="unknown G.711 law"):
        phone_line(audio, law="gsm")
    with pytest.raises(AudioError, match="mono float32"):
        phone_line(np.zeros(1600, dtype=np.int16))  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="mono float32"):
        phone_line(np.zeros((1600, 2), dtype=np.float32))
    with pytest.raises(AudioError, match=">= 8000 Hz"):
        phone_line(audio, rate_hz=4000)
    assert phone_line(np.zeros(0, dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize("command", ["evaluate", "crossval"])
def test_phone_flag_offers_exactly_the_g711_laws(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--phone of evaluate and crossval offers the laws phone_line takes, spelt out in the CLI."""
    from server.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"--phone {{{','.join(G711_LAWS)}}}" in capsys.readouterr().out
