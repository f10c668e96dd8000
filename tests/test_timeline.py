"""Timeline rows and files: columns, CSV/JSONL round trips, appending, bad suffixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import WindowMessage
from streamer.protocol.timeline import (
    TimelineWriter,
    columns,
    read_timeline,
    row_key,
    timeline_format,
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
