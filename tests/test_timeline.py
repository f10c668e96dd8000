"""Timeline rows and files: columns, CSV/JSONL round trips, appending, bad suffixes, the
utterance and alert files, refusing existing files and appending without duplicates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import AlertMessage, UtteranceMessage, WindowMessage
from streamer.protocol.timeline import (
    TimelineFiles,
    TimelineWriter,
    alert_row,
    columns,
    kind_columns,
    kind_path,
    read_timeline,
    row_identity,
    row_key,
    timeline_format,
    utterance_row,
    window_row,
)

LABELS = ("Angry", "Happy", "Neutral", "Sad")


def window(seq: int, stream: str = "call") -> WindowMessage:
    return WindowMessage(
        stream=stream, seq=seq, start_s=0.5 * seq, end_s=0.5 * seq + 2.0,
        wall_time=1.7e9 + seq / 3, probabilities={"Angry": 0.1, "Happy": 0.2, "Neutral": 0.6,
                                                  "Sad": 0.1 + seq / 1e6},
        label="Neutral", confidence=0.6, smoothed_label="uncertain", smoothed_confidence=1 / 3,
    )


def test_columns_and_row_are_in_file_order() -> None:
    """A row has the base columns, one p_<label> column per class in model order, wall_time."""
    cols = columns(LABELS)
    assert cols[:3] == ("session", "stream", "seq")
    assert cols[-5:] == ("p_Angry", "p_Happy", "p_Neutral", "p_Sad", "wall_time")
    row = window_row(window(2), LABELS, session="abc")
    assert tuple(row) == cols
    assert row_key(row) == ("abc", "call", 2)


def test_window_without_a_label_is_refused() -> None:
    """A window whose probabilities miss a model label names the missing label."""
    with pytest.raises(TimelineError, match="Sad"):
        window_row(window(0), ("Angry", "Sad", "Other"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip_and_append(tmp_path: Path, suffix: str) -> None:
    """Rows read back equal to what was written, and a reopened file appends (one CSV header)."""
    path = tmp_path / f"timeline{suffix}"
    written = []
    with TimelineWriter(path, LABELS) as writer:
        written += [writer.write_window(window(i), session="s") for i in range(3)]
    with TimelineWriter(path, LABELS) as writer:
        written.append(writer.write_window(window(3), session="s"))
        writer.close()
    writer.close()
    assert read_timeline(path) == written
    if suffix == ".csv":
        assert path.read_text().count("session,stream,seq") == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_are_flushed_as_written(tmp_path: Path, suffix: str) -> None:
    """Each row is on disk as soon as write returns, before the writer closes."""
    path = tmp_path / f"timeline{suffix}"
    with TimelineWriter(path, LABELS) as writer:
        writer.write_window(window(0))
        assert [row["seq"] for row in read_timeline(path)] == [0]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A crash mid-row leaves a partial last line that reading skips."""
    path = tmp_path / "t.jsonl"
    with TimelineWriter(path, LABELS) as writer:
        writer.write_window(window(0))
    with path.open("a") as handle:
        handle.write('{"session":"","stream":"ca')
    assert len(read_timeline(path)) == 1


def test_bad_suffix_and_mismatched_header(tmp_path: Path) -> None:
    """An unknown suffix and a CSV written for other labels are one-line TimelineErrors."""
    with pytest.raises(TimelineError, match=r"\.txt"):
        timeline_format(tmp_path / "out.txt")
    path = tmp_path / "t.csv"
    with TimelineWriter(path, ("a", "b")):
        pass
    with pytest.raises(TimelineError, match="existing timeline"), TimelineWriter(path, LABELS):
        pass


def test_missing_folder_is_a_client_error(tmp_path: Path) -> None:
    """Writing into a folder that does not exist fails with a TimelineError naming it."""
    with pytest.raises(TimelineError, match="does not exist"), TimelineWriter(
        tmp_path / "nope" / "t.csv", LABELS
    ):
        pass


def utterance(start_s: float, stream: str = "call") -> UtteranceMessage:
    return UtteranceMessage(
        stream=stream, start_s=start_s, end_s=start_s + 1.75, wall_time=1.7e9 + start_s,
        probabilities={"Angry": 0.7, "Happy": 0.1, "Neutral": 0.1, "Sad": 0.1}, label="Angry",
        confidence=0.7, windows=3, windows_dropped=1,
    )


def alert(alert_id: int, state: str, stream: str = "call") -> AlertMessage:
    return AlertMessage(
        alert_id=alert_id, stream=stream, state=state, rule="Angry>=0.6 for 1s", label="Angry",
        threshold=0.6, for_s=1.0, since_s=2.0, at_s=3.5 if state == "start" else 6.0,
        probability=0.65, wall_time=1.7e9 + alert_id + (state == "end"),
    )


def test_utterance_and_alert_files_sit_beside_the_window_file(tmp_path: Path) -> None:
    """calls.csv has calls.utterances.csv and calls.alerts.csv beside it, columns in order."""
    out = tmp_path / "calls.csv"
    assert kind_path(out, "window") == out
    assert kind_path(out, "utterance") == tmp_path / "calls.utterances.csv"
    assert kind_path(tmp_path / "c.jsonl", "alert") == tmp_path / "c.alerts.jsonl"
    assert kind_columns("utterance", LABELS) == (
        "session", "stream", "start_s", "end_s", "label", "confidence", "p_Angry", "p_Happy",
        "p_Neutral", "p_Sad", "windows", "windows_dropped", "wall_time")
    assert kind_columns("alert", LABELS) == (
        "session", "stream", "alert_id", "state", "rule", "label", "threshold", "for_s",
        "since_s", "at_s", "probability", "reason", "speech_s", "wall_time")
    assert tuple(utterance_row(utterance(1.0), LABELS, session="s")) == kind_columns(
        "utterance", LABELS)
    assert tuple(alert_row(alert(1, "start"), session="s")) == kind_columns("alert", LABELS)
    with pytest.raises(TimelineError, match="no probability"):
        utterance_row(utterance(1.0), ("Angry", "Other"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_every_kind_round_trips_with_its_types(tmp_path: Path, suffix: str) -> None:
    """Window, utterance and alert rows read back equal, ints as ints and floats as floats."""
    out = tmp_path / f"calls{suffix}"
    with TimelineFiles(out, LABELS) as files:
        for message in (window(0), alert(1, "start"), utterance(0.0), alert(1, "end")):
            assert files.write(message, session="s1")
    assert files.written == {"window": 1, "utterance": 1, "alert": 2}
    assert read_timeline(out) == [window_row(window(0), LABELS, session="s1")]
    assert read_timeline(kind_path(out, "utterance")) == [
        utterance_row(utterance(0.0), LABELS, session="s1")]
    alerts = read_timeline(kind_path(out, "alert"))
    assert alerts == [alert_row(alert(1, s), session="s1") for s in ("start", "end")]
    assert isinstance(alerts[0]["alert_id"], int) and isinstance(alerts[0]["at_s"], float)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_existing_timeline_is_refused_unless_appending(tmp_path: Path, suffix: str) -> None:
    """A file with rows is refused (naming --append) before any file is made or changed."""
    out = tmp_path / f"calls{suffix}"
    utterances = kind_path(out, "utterance")
    utterances.write_text("something\n")
    with pytest.raises(TimelineError, match="already exists: pass --append"):
        TimelineFiles(out, LABELS).open()
    assert not out.exists() and utterances.read_text() == "something\n"
    utterances.write_text("")  # an empty file holds nothing to lose
    with TimelineFiles(out, LABELS) as files:
        files.write(window(0), session="s")
    with pytest.raises(TimelineError, match="--append"):
        TimelineFiles(out, LABELS, kinds=("window",)).open()
    assert [row["seq"] for row in read_timeline(out)] == [0]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_appending_never_writes_a_row_twice(tmp_path: Path, suffix: str) -> None:
    """--append leaves out rows already in each file and adds the new ones, once each."""
    out = tmp_path / f"calls{suffix}"
    first = [window(0), window(1), utterance(0.0), alert(1, "start")]
    with TimelineFiles(out, LABELS) as files:
        for message in first:
            files.write(message, session="s")
    # a stream name reused in the session: seq 0 again, at a later wall time
    reused = dataclasses.replace(window(0), wall_time=window(0).wall_time + 60)
    with TimelineFiles(out, LABELS, append=True) as files:
        written = [files.write(m, session="s") for m in [*first, window(2), reused,
                                                          alert(1, "end")]]
    assert written == [False] * 4 + [True] * 3
    assert files.skipped == {"window": 2, "utterance": 1, "alert": 1}
    assert [(r["seq"], r["wall_time"]) for r in read_timeline(out)] == [
        (0, window(0).wall_time), (1, window(1).wall_time), (2, window(2).wall_time),
        (0, reused.wall_time)]
    assert [r["state"] for r in read_timeline(kind_path(out, "alert"))] == ["start", "end"]
    assert len(read_timeline(kind_path(out, "utterance"))) == 1
    if suffix == ".csv":
        assert out.read_text().count("session,stream,seq") == 1


def test_appending_cuts_a_torn_row_and_refuses_other_columns(tmp_path: Path) -> None:
    """A torn last row is cut before appending; rows of other labels are a TimelineError."""
    out = tmp_path / "calls.jsonl"
    with TimelineFiles(out, LABELS, kinds=("window",)) as files:
        files.write(window(0), session="s")
    with out.open("a") as handle:
        handle.write('{"session":"s","stream":"ca')
    with TimelineFiles(out, LABELS, kinds=("window",), append=True) as files:
        assert not files.write(window(0), session="s")
        assert files.write(window(1), session="s")
    assert [row["seq"] for row in read_timeline(out)] == [0, 1]
    with pytest.raises(TimelineError, match="row 1 has columns"):
        TimelineFiles(out, ("a", "b"), kinds=("window",), append=True).open()


def test_row_identity_names_what_makes_a_row_the_same() -> None:
    """Windows by session, stream, seq and wall time; alerts by id and state too."""
    row = window_row(window(2), LABELS, session="abc")
    assert row_identity("window", row) == ("abc", "call", 2, window(2).wall_time)
    start, end = (alert_row(alert(7, s), session="abc") for s in ("start", "end"))
    assert row_identity("alert", start) != row_identity("alert", end)
    assert row_identity("utterance", utterance_row(utterance(1.5), LABELS, session="x"))[:3] == (
        "x", "call", 1.5)
