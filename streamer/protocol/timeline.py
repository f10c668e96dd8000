"""Timeline files: one row per classified window, as CSV or JSONL (caller's thread or loop).

A timeline row is a flat mapping with these columns, in this order::

    session, stream, seq, start_s, end_s, label, confidence, smoothed_label,
    smoothed_confidence, p_<label> for each model label (model order), wall_time

``(session, stream, seq)`` names a window uniquely: a ``log`` client uses it to skip rows it has
already written after a reconnect. ``start_s``/``end_s`` are stream seconds, ``wall_time`` Unix
seconds. CSV and JSONL hold exactly the same rows; :func:`read_timeline` reads either back with
the same types (ints, floats, strings).

Row building (:func:`columns`, :func:`window_row`) is pure; :class:`TimelineWriter` is the thin
I/O shell: it picks the format from the file suffix, appends, writes a CSV header only to a new
or empty file, and flushes every row so a crash loses at most the row being written.
Imports only the standard library and the wire schema.
"""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import WindowMessage

__all__ = [
    "BASE_COLUMNS",
    "FORMATS",
    "TimelineFormat",
    "TimelineWriter",
    "columns",
    "iter_timeline",
    "probability_column",
    "read_timeline",
    "new_session_id",
    "row_key",
    "timeline_format",
    "window_row",
]

TimelineFormat = Literal["csv", "jsonl"]

#: file suffix -> format
FORMATS: dict[str, TimelineFormat] = {".csv": "csv", ".jsonl": "jsonl"}

BASE_COLUMNS: tuple[str, ...] = (
    "session",
    "stream",
    "seq",
    "start_s",
    "end_s",
    "label",
    "confidence",
    "smoothed_label",
    "smoothed_confidence",
)
_INT_COLUMNS = frozenset({"seq"})
_FLOAT_COLUMNS = frozenset({"start_s", "end_s", "confidence", "smoothed_confidence", "wall_time"})



def new_session_id() -> str:
    """A random id for one run of a server or of ``analyze`` (12 hex digits): the ``session``
    column that, with stream and seq, names a window uniquely."""
    return secrets.token_hex(6)

def probability_column(label: str) -> str:
    """The column holding the probability of ``label``: ``p_<label>``."""
    return f"p_{label}"


def columns(labels: Sequence[str]) -> tuple[str, ...]:
    """All columns of a timeline for a model with these labels, in file order."""
    if not labels:
        raise TimelineError("a timeline needs at least one label")
    if len(set(labels)) != len(labels):
        raise TimelineError(f"duplicate labels: {list(labels)}")
    return (*BASE_COLUMNS, *(probability_column(label) for label in labels), "wall_time")


def window_row(
    message: WindowMessage, labels: Sequence[str], *, session: str = ""
) -> dict[str, Any]:
    """A window message -> a timeline row (columns in file order)."""
    missing = [label for label in labels if label not in message.probabilities]
    if missing:
        raise TimelineError(
            f"window {message.stream}#{message.seq} has no probability for {missing}; "
            f"it has {sorted(message.probabilities)}"
        )
    row: dict[str, Any] = {
        "session": session,
        "stream": message.stream,
        "seq": message.seq,
        "start_s": message.start_s,
        "end_s": message.end_s,
        "label": message.label,
        "confidence": message.confidence,
        "smoothed_label": message.smoothed_label,
        "smoothed_confidence": message.smoothed_confidence,
    }
    for label in labels:
        row[probability_column(label)] = float(message.probabilities[label])
    row["wall_time"] = message.wall_time
    return row


def row_key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    """``(session, stream, seq)``: what names a window across reconnects."""
    return (str(row["session"]), str(row["stream"]), int(row["seq"]))


def timeline_format(path: str | Path) -> TimelineFormat:
    """CSV or JSONL from the file suffix; any other suffix is a TimelineError."""
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise TimelineError(
            f"{path}: unsupported timeline file suffix {suffix or '(none)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    return fmt


def _typed(name: str, value: Any) -> Any:
    if name in _INT_COLUMNS:
        return int(value)
    if name in _FLOAT_COLUMNS or name.startswith("p_"):
        return float(value)
    return "" if value is None else str(value)


def iter_timeline(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV or JSONL timeline, typed (seq int, times and probabilities float).

    A truncated last line (a crash mid-write) is skipped rather than failing the whole file.
    """
    path = Path(path)
    fmt = timeline_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TimelineError(f"{path}: cannot read timeline ({exc.strerror or exc})") from exc
    if fmt == "jsonl":
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines) and not text.endswith("\n"):
                    return  # a torn last line
                raise TimelineError(f"{path}:{number}: not a JSON row ({exc.msg})") from exc
            if not isinstance(body, dict):
                raise TimelineError(f"{path}:{number}: a row must be a JSON object")
            yield {name: _typed(name, value) for name, value in body.items()}
        return
    complete = text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(complete, newline=""))
    for record in reader:
        yield {name: _typed(name, value) for name, value in record.items()}


def read_timeline(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a CSV or JSONL timeline (see :func:`iter_timeline`)."""
    return list(iter_timeline(path))


def _read_csv_header(path: Path) -> tuple[str, ...] | None:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return None
    if not first.strip():
        return None
    return tuple(next(csv.reader([first])))


class TimelineWriter:
    """Appends timeline rows to one CSV or JSONL file, flushing after every row.

    Usage::

        with TimelineWriter("out.csv", labels) as writer:
            writer.write_window(message, session=hello.session)

    An existing CSV must have the same columns (same labels) or opening fails with a TimelineError,
    so rows of different models never mix in one file. ``close()`` is idempotent.
    """

    def __init__(self, path: str | Path, labels: Sequence[str]) -> None:
        self.path = Path(path)
        self.format: TimelineFormat = timeline_format(self.path)
        self.labels: tuple[str, ...] = tuple(labels)
        self.columns: tuple[str, ...] = columns(self.labels)
        self.rows_written = 0
        self._handle: io.TextIOWrapper | None = None
        self._csv: Any = None
        self._closed = False

    def open(self) -> TimelineWriter:
        """Open (create or append); called by ``__enter__``."""
        if self._handle is not None:
            return self
        if self._closed:
            raise TimelineError(f"{self.path}: timeline writer already closed")
        new_file = True
        if self.format == "csv":
            header = _read_csv_header(self.path)
            if header is not None:
                if header != self.columns:
                    raise TimelineError(
                        f"{self.path}: existing timeline has columns {list(header)}, "
                        f"expected {list(self.columns)}; write to a new file"
                    )
                new_file = False
        try:
            if self.path.parent and not self.path.parent.exists():
                raise TimelineError(f"{self.path}: folder {self.path.parent} does not exist")
            handle = self.path.open("a", encoding="utf-8", newline="")
        except OSError as exc:
            reason = exc.strerror or exc
            raise TimelineError(f"{self.path}: cannot write timeline ({reason})") from exc
        self._handle = handle
        if self.format == "csv":
            self._csv = csv.writer(handle, lineterminator="\n")
            if new_file:
                self._csv.writerow(self.columns)
                handle.flush()
        return self

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Append one row (a mapping with exactly :attr:`columns`) and flush it."""
        handle = self._handle
        if handle is None:
            raise TimelineError(f"{self.path}: timeline writer is not open")
        if set(row) != set(self.columns):
            extra = sorted(set(row) - set(self.columns))
            missing = sorted(set(self.columns) - set(row))
            raise TimelineError(f"timeline row does not fit: missing {missing}, extra {extra}")
        for name in self.columns:
            value = row[name]
            if isinstance(value, float) and not math.isfinite(value):
                raise TimelineError(f"timeline column {name!r} is not finite: {value!r}")
        if self.format == "csv":
            self._csv.writerow([row[name] for name in self.columns])
        else:
            ordered = {name: row[name] for name in self.columns}
            handle.write(json.dumps(ordered, separators=(",", ":"), allow_nan=False) + "\n")
        handle.flush()
        self.rows_written += 1

    def write_window(self, message: WindowMessage, *, session: str = "") -> dict[str, Any]:
        """Append the row for one window message; returns the row written."""
        row = window_row(message, self.labels, session=session)
        self.write_row(row)
        return row

    def close(self) -> None:
        """Flush and close the file; safe to call more than once."""
        self._closed = True
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> TimelineWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
