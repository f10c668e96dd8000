"""Timeline files: one row per window, utterance or alert, as CSV or JSONL (caller's thread).

A timeline is up to three files of one format, one per kind of row (:data:`TIMELINE_KINDS`,
see :func:`kind_path`): ``calls.csv`` holds the windows, ``calls.utterances.csv`` the
utterances (closed speech segments labelled as a whole) and ``calls.alerts.csv`` the alert
starts and ends. A window row is a flat mapping with these columns, in this order::

    session, stream, seq, start_s, end_s, label, confidence, smoothed_label,
    smoothed_confidence, p_<label> for each model label (model order), wall_time

an utterance row::

    session, stream, start_s, end_s, label, confidence, p_<label> ..., windows,
    windows_dropped, wall_time

and an alert row ``session, stream``, then the other fields of the ``alert`` message in their
order (``alert_id, state, rule, label, threshold, for_s, since_s, at_s, probability`` ...) and
``wall_time``. ``(session, stream, seq)`` names a window uniquely: a ``log`` client uses it to
skip rows it has already written after a reconnect. ``start_s``/``end_s`` are stream seconds,
``wall_time`` Unix seconds. CSV and JSONL hold exactly the same rows; :func:`read_timeline`
reads either back with the same types (ints, floats, strings).

Row building (:func:`columns`, :func:`window_row`, :func:`utterance_row`, :func:`alert_row`,
:func:`row_identity`) is pure; :class:`TimelineWriter` is the thin I/O shell of one file: it
picks the format from the file suffix, appends, writes a CSV header only to a new or empty
file, and flushes every row so a crash loses at most the row being written; with
``skip_known`` it leaves out rows already in the file. :class:`TimelineFiles` is the set of
files of one timeline as ``analyze`` and ``export`` write it: an existing file is refused
unless appending, and appending never writes a row twice.
Imports only the standard library and the wire schema.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import AlertMessage, Message, UtteranceMessage, WindowMessage

__all__ = [
    "BASE_COLUMNS",
    "FORMATS",
    "TIMELINE_KINDS",
    "TimelineFiles",
    "TimelineFormat",
    "TimelineKind",
    "TimelineWriter",
    "alert_row",
    "check_new_timeline",
    "columns",
    "iter_timeline",
    "kind_columns",
    "kind_path",
    "probability_column",
    "read_timeline",
    "new_session_id",
    "row_identity",
    "row_key",
    "timeline_format",
    "utterance_row",
    "window_row",
]

logger = logging.getLogger(__name__)

TimelineFormat = Literal["csv", "jsonl"]
TimelineKind = Literal["window", "utterance", "alert"]
#: the kinds of rows, each in its own file (see :func:`kind_path`)
TIMELINE_KINDS: tuple[TimelineKind, ...] = ("window", "utterance", "alert")

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
_ROW_MESSAGES = (WindowMessage, UtteranceMessage, AlertMessage)


def _columns_typed(annotation: str) -> frozenset[str]:
    """Names of the row messages' fields of one type (a column's type when read back)."""
    return frozenset(f.name for cls in _ROW_MESSAGES for f in fields(cls)
                     if str(f.type) == annotation)


_INT_COLUMNS = _columns_typed("int")
_FLOAT_COLUMNS = _columns_typed("float")
#: the alert message's fields as columns, after session and stream, wall_time last
_ALERT_FIELDS = tuple(f.name for f in fields(AlertMessage)
                      if f.name not in ("stream", "wall_time"))
_UTTERANCE_HEAD = ("session", "stream", "start_s", "end_s", "label", "confidence")
#: what names one row of each kind: the same event exported twice gives the same identity
_IDENTITY: dict[TimelineKind, tuple[str, ...]] = {
    "window": ("session", "stream", "seq", "wall_time"),
    "utterance": ("session", "stream", "start_s", "wall_time"),
    "alert": ("session", "stream", "alert_id", "state", "wall_time"),
}
_KIND_OF: dict[type, TimelineKind] = {
    WindowMessage: "window", UtteranceMessage: "utterance", AlertMessage: "alert",
}


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


def kind_columns(kind: TimelineKind, labels: Sequence[str]) -> tuple[str, ...]:
    """All columns of one kind of timeline file for a model with these labels, in file order."""
    window = columns(labels)
    if kind == "window":
        return window
    if kind == "utterance":
        probabilities = tuple(probability_column(label) for label in labels)
        return (*_UTTERANCE_HEAD, *probabilities, "windows", "windows_dropped", "wall_time")
    if kind == "alert":
        return ("session", "stream", *_ALERT_FIELDS, "wall_time")
    raise TimelineError(f"unknown timeline kind {kind!r}; known: {', '.join(TIMELINE_KINDS)}")


def kind_path(out: str | Path, kind: TimelineKind) -> Path:
    """The file of one kind of row: ``out`` itself for windows, ``<stem>.<kind>s<suffix>``
    beside it for the others (``calls.csv`` -> ``calls.utterances.csv``, ``calls.alerts.csv``)."""
    out = Path(out)
    return out if kind == "window" else out.with_name(f"{out.stem}.{kind}s{out.suffix}")


def utterance_row(
    message: UtteranceMessage, labels: Sequence[str], *, session: str = ""
) -> dict[str, Any]:
    """An utterance message -> a timeline row (columns in file order)."""
    missing = [label for label in labels if label not in message.probabilities]
    if missing:
        raise TimelineError(
            f"utterance {message.stream}@{message.start_s:g}s has no probability for {missing}"
        )
    row: dict[str, Any] = {
        "session": session,
        "stream": message.stream,
        "start_s": message.start_s,
        "end_s": message.end_s,
        "label": message.label,
        "confidence": message.confidence,
    }
    for label in labels:
        row[probability_column(label)] = float(message.probabilities[label])
    row["windows"] = message.windows
    row["windows_dropped"] = message.windows_dropped
    row["wall_time"] = message.wall_time
    return row


def alert_row(message: AlertMessage, *, session: str = "") -> dict[str, Any]:
    """An alert message (a start or an end) -> a timeline row (columns in file order)."""
    row: dict[str, Any] = {"session": session, "stream": message.stream}
    for name in _ALERT_FIELDS:
        row[name] = getattr(message, name)
    row["wall_time"] = message.wall_time
    return row


def row_key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    """``(session, stream, seq)``: what names a window across reconnects."""
    return (str(row["session"]), str(row["stream"]), int(row["seq"]))


def row_identity(kind: TimelineKind, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a row the same row when a timeline is appended to (typed values).

    Windows: session, stream, seq and wall_time (a stream name reused within a session starts
    its seq again, at a later wall time); utterances: session, stream, start_s, wall_time;
    alerts: session, stream, alert_id, state (start or end), wall_time.
    """
    return tuple(_typed(name, row[name]) for name in _IDENTITY[kind])


def check_new_timeline(
    out: str | Path, kinds: Iterable[TimelineKind] = TIMELINE_KINDS, *, append: bool = False
) -> None:
    """A TimelineError when a file of the timeline is a folder or, unless ``append``, holds
    something already (an empty file counts as new)."""
    for kind in kinds:
        path = kind_path(out, kind)
        if path.is_dir():
            raise TimelineError(f"{path}: is a folder, expected a timeline file")
        if not append and path.is_file() and path.stat().st_size > 0:
            raise TimelineError(
                f"{path} already exists: pass --append to add to it (rows already in it are "
                "not written again), or choose another --out"
            )


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
    """Appends rows of one kind to one CSV or JSONL file, flushing after every row.

    Usage::

        with TimelineWriter("out.csv", labels) as writer:
            writer.write_window(message, session=hello.session)

    An existing CSV must have the same columns (same labels) or opening fails with a TimelineError,
    so rows of different models never mix in one file. With ``skip_known`` opening also reads
    the rows already in the file (every one must have this kind's columns; a torn last line is
    cut off) and :meth:`write_row` leaves out a row whose :func:`row_identity` is among them
    (counted in ``rows_skipped``). ``close()`` is idempotent.
    """

    def __init__(
        self,
        path: str | Path,
        labels: Sequence[str],
        *,
        kind: TimelineKind = "window",
        skip_known: bool = False,
    ) -> None:
        self.path = Path(path)
        self.format: TimelineFormat = timeline_format(self.path)
        self.kind: TimelineKind = kind
        self.labels: tuple[str, ...] = tuple(labels)
        self.columns: tuple[str, ...] = kind_columns(kind, self.labels)
        self.skip_known = skip_known
        self.rows_written = 0
        self.rows_skipped = 0
        self._known: set[tuple[Any, ...]] = set()
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
        if self.skip_known and self.path.is_file():
            self._read_known()
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

    def _read_known(self) -> None:
        """Note the identity of every row in the file; cut a torn last line (a crash mid-row)."""
        wanted = set(self.columns)
        for number, row in enumerate(iter_timeline(self.path), start=1):
            if set(row) != wanted:
                raise TimelineError(
                    f"{self.path}: row {number} has columns {sorted(row)}, expected "
                    f"{list(self.columns)}; write to a new file"
                )
            self._known.add(row_identity(self.kind, row))
        try:
            with self.path.open("rb+") as handle:
                data = handle.read()
                if data and not data.endswith(b"\n"):
                    keep = data.rfind(b"\n") + 1
                    handle.truncate(keep)
                    logger.warning("%s: cut a torn last row (%d bytes) before appending",
                                   self.path, len(data) - keep)
        except OSError as exc:
            reason = exc.strerror or exc
            raise TimelineError(f"{self.path}: cannot read timeline ({reason})") from exc

    def write_row(self, row: Mapping[str, Any]) -> bool:
        """Append one row (a mapping with exactly :attr:`columns`) and flush it; False when
        ``skip_known`` left it out (the file has it already)."""
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
        if self._known and row_identity(self.kind, row) in self._known:
            self.rows_skipped += 1
            return False
        if self.format == "csv":
            self._csv.writerow([row[name] for name in self.columns])
        else:
            ordered = {name: row[name] for name in self.columns}
            handle.write(json.dumps(ordered, separators=(",", ":"), allow_nan=False) + "\n")
        handle.flush()
        self.rows_written += 1
        return True

    def write_window(self, message: WindowMessage, *, session: str = "") -> dict[str, Any]:
        """Append the row for one window message; returns the row (written or known)."""
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


class TimelineFiles:
    """The files of one timeline (``out`` and its siblings, see :func:`kind_path`), written by
    ``analyze`` and ``export``.

    Usage::

        with TimelineFiles("calls.csv", labels, append=False) as files:
            files.write(message, session=session)   # a window, utterance or alert message

    Opening refuses a file that already holds rows unless ``append`` (then rows already in a
    file are left out: see :class:`TimelineWriter` ``skip_known``), checking every file before
    it creates any. ``kinds`` chooses the files (messages of other kinds are ignored);
    ``written`` and ``skipped`` count rows per kind. ``close()`` is idempotent.
    """

    def __init__(
        self,
        out: str | Path,
        labels: Sequence[str],
        *,
        kinds: Sequence[TimelineKind] = TIMELINE_KINDS,
        append: bool = False,
    ) -> None:
        self.out = Path(out)
        self.labels = tuple(labels)
        self.kinds = tuple(kinds)
        self.append = append
        self.paths: dict[TimelineKind, Path] = {kind: kind_path(out, kind) for kind in kinds}
        self._writers: dict[TimelineKind, TimelineWriter] = {
            kind: TimelineWriter(path, self.labels, kind=kind, skip_known=append)
            for kind, path in self.paths.items()
        }
        self._opened = False

    @property
    def written(self) -> dict[TimelineKind, int]:
        """Rows written, per kind."""
        return {kind: writer.rows_written for kind, writer in self._writers.items()}

    @property
    def skipped(self) -> dict[TimelineKind, int]:
        """Rows left out because their file had them already, per kind."""
        return {kind: writer.rows_skipped for kind, writer in self._writers.items()}

    def open(self) -> TimelineFiles:
        """Check every file, then open them all (once); called by ``__enter__``."""
        if self._opened:
            return self
        check_new_timeline(self.out, self.kinds, append=self.append)
        self._opened = True
        try:
            for writer in self._writers.values():
                writer.open()
        except BaseException:
            self.close()
            raise
        return self

    def write(self, message: Message, *, session: str) -> bool:
        """Append the row of a window, utterance or alert message; False when it was left out
        (known already, or a kind not chosen)."""
        kind = _KIND_OF.get(type(message))
        writer = None if kind is None else self._writers.get(kind)
        if writer is None:
            return False
        if isinstance(message, WindowMessage):
            row = window_row(message, self.labels, session=session)
        elif isinstance(message, UtteranceMessage):
            row = utterance_row(message, self.labels, session=session)
        else:
            assert isinstance(message, AlertMessage)
            row = alert_row(message, session=session)
        return writer.write_row(row)

    def close(self) -> None:
        """Flush and close every file; safe to call more than once."""
        for writer in self._writers.values():
            writer.close()

    def __enter__(self) -> TimelineFiles:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
