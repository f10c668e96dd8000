"""The wire schema: round trips and the errors a bad frame gets."""

from __future__ import annotations

import pytest

from client.messages import (
    ErrorMessage,
    Hello,
    MessageError,
    StatsMessage,
    StreamInfo,
    Subscribe,
    WindowMessage,
    decode,
    encode,
)

WINDOW = WindowMessage(
    stream="mic", seq=3, start_s=1.5, end_s=3.5, wall_time=1.7e9,
    probabilities={"Angry": 0.1, "Happy": 0.2, "Neutral": 0.6, "Sad": 0.1},
    label="Neutral", confidence=0.6, smoothed_label="uncertain", smoothed_confidence=0.45,
)


@pytest.mark.parametrize(
    "message",
    [
        WINDOW,
        Hello(session="s1", model="bundled", labels=("a", "b"), window_s=2.0, hop_s=0.5,
              sample_rate_hz=16000, streams=(StreamInfo("mic", 48000, {"role": "agent"}),)),
        StatsMessage(wall_time=1.0, lag_s=0.2, windows_done=5, windows_dropped=1,
                     blocks_dropped=0, input_overflows=2, clients=1, client_messages_dropped=0),
        ErrorMessage(code="bad_json", message="nope"),
        Subscribe(streams=("a", "b")),
    ],
)
def test_round_trip(message: object) -> None:
    """Every message decodes to what was encoded, with type and version on the wire."""
    frame = encode(message)  # type: ignore[arg-type]
    assert '"v":1' in frame
    assert decode(frame) == message


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"v":1}', "'type'"),
        ('{"type":"window","v":9}', "version 9"),
        ('{"type":"nope","v":1}', "unknown message type 'nope'"),
        ('{"type":"window","v":1,"stream":"a"}', "lacks 'seq'"),
        ('{"type":"subscribe","v":1,"streams":"a"}', "'streams' must be list"),
        ('{"type":"error","v":1,"code":1,"message":"x"}', "'code' must be str"),
        (b'{"type":"subscribe","v":1}', "binary frame"),
    ],
)
def test_bad_frames_name_the_problem(frame: str | bytes, needle: str) -> None:
    """A bad frame raises MessageError whose text names what is wrong."""
    with pytest.raises(MessageError) as info:
        decode(frame)
    assert needle in str(info.value)


def test_unknown_fields_are_ignored_and_nan_refused() -> None:
    """Decoding tolerates extra fields; encoding refuses NaN rather than writing bad JSON."""
    assert decode('{"type":"subscribe","v":1,"extra":true}') == Subscribe()
    nan_stats = StatsMessage(
        wall_time=float("nan"), lag_s=0, windows_done=0, windows_dropped=0,
        blocks_dropped=0, input_overflows=0, clients=0, client_messages_dropped=0,
    )
    with pytest.raises(MessageError, match="non-finite"):
        encode(nan_stats)
