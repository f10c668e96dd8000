"""The wire schema: round trips and the errors a bad frame gets."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from streamer.protocol.limits import UNCERTAIN
from streamer.protocol.messages import (
    _TYPES,
    ALERT_END_REASONS,
    AlertMessage,
    ErrorMessage,
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    MessageError,
    StatsMessage,
    StreamInfo,
    Subscribe,
    UtteranceMessage,
    WindowMessage,
    decode,
    encode,
    stream_wanted,
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
        UtteranceMessage(stream="c/agent", start_s=0.3, end_s=3.1, wall_time=1.7e9,
                         probabilities={"a": 0.25, "b": 0.75}, label="b", confidence=0.75,
                         windows=4, windows_dropped=1),
        AlertMessage(alert_id=1, stream="c/customer", state="start", rule="Angry>=0.7 for 5s",
                     label="Angry", threshold=0.7, for_s=5.0, since_s=10.0, at_s=15.0,
                     probability=0.81, wall_time=1.7e9, speech_s=5.0),
        AlertMessage(alert_id=1, stream="c/customer", state="end", rule="Angry>=0.7 for 5s",
                     label="Angry", threshold=0.7, for_s=5.0, since_s=10.0, at_s=19.5,
                     probability=0.74, wall_time=1.7e9, reason="stream_closed", speech_s=7.5),
        IngestStart(stream="call-42", sample_rate_hz=8000, channels=2, format="s16le",
                    roles=("agent", "customer"), metadata={"campaign": "x"}),
        IngestAck(stream="call-42", streams=("call-42/agent", "call-42/customer"),
                  max_frame_bytes=131072, idle_timeout_s=10.0),
        IngestEnd(),
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


def test_subscription_entries_ending_in_slash_are_prefixes() -> None:
    """'call-42/' covers that call's channels only; plain entries match exactly; () is all."""
    wanted = ("call-42/", "mic")
    assert stream_wanted("call-42/agent", wanted) and stream_wanted("mic", wanted)
    assert not stream_wanted("call-420/agent", wanted) and not stream_wanted("mic2", wanted)
    assert not stream_wanted("call-42", wanted)
    assert stream_wanted("anything", ()) and stream_wanted(None, wanted)


def test_hello_carries_the_uncertain_label_and_old_hellos_get_the_default() -> None:
    """hello sends the protocol's uncertain label; one without the field decodes to it."""
    hello = Hello(session="s", model="m", labels=("a",), window_s=2.0, hop_s=0.5,
                  sample_rate_hz=16000)
    body = json.loads(encode(hello))
    assert body["uncertain_label"] == UNCERTAIN == "uncertain"
    del body["uncertain_label"]
    assert decode(json.dumps(body)) == hello


def test_alert_end_reasons_and_old_alerts_without_reason_or_speech_time() -> None:
    """An alert from a server before reason/speech_s decodes with "" and 0.0; reasons listed."""
    assert ALERT_END_REASONS == ("cleared", "silence", "stream_closed", "shutdown")
    body = {"type": "alert", "v": 1, "alert_id": 2, "stream": "s", "state": "end",
            "rule": "Sad>=0.6 for 3s", "label": "Sad", "threshold": 0.6, "for_s": 3.0,
            "since_s": 1.0, "at_s": 13.7, "probability": 0.62, "wall_time": 1.7e9}
    old = decode(json.dumps(body))
    assert isinstance(old, AlertMessage) and (old.reason, old.speech_s) == ("", 0.0)
    body["reason"] = 7
    with pytest.raises(MessageError, match="'reason' must be str"):
        decode(json.dumps(body))


def test_every_documented_example_decodes_and_every_type_is_documented() -> None:
    """Each JSON message line in docs/protocol.md decodes, and every message type has one."""
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    # the telephony connectors' section shows the platforms' own messages too: there only
    # ours (they carry the protocol version) are examples of this protocol
    start = text.index("\n## Telephony connectors")
    end = text.index("\n## ", start + 1)
    connectors = [line for line in text[start:end].splitlines() if '"v":1' in line]
    lines = (text[:start] + text[end:]).splitlines() + connectors
    examples = [line.strip() for line in lines if line.strip().startswith('{"type":')]
    documented = set()
    for line in examples:
        message = decode(line)
        assert json.loads(encode(message)) == json.loads(line), line
        documented.add(message.TYPE)
    assert documented == set(_TYPES)
