"""The AudioSocket leg map: which call and role each AudioSocket UUID is (event loop + a thread).

AudioSocket carries nothing but a UUID, so the dialplan writes one line per leg before it
connects the leg (``Set(FILE(<file>,,,al)=...)`` appends a line)::

    # UUID                                 call id        role      parameters (optional)
    40325ec2-5efd-4bd3-805f-53576e581d13   1712345678.42  customer  queue=sales

Fields are separated by blanks; ``#`` starts a comment line. The call id is 1-128 letters,
digits or ``_.:@+-``; the role is one of the connector's call roles; each parameter is
``KEY=VALUE`` without blanks (stream metadata ``param.KEY``). A UUID written twice: the later
line wins. The map is the AudioSocket credential: a UUID not in it is refused, and each UUID
opens one connection (a second one is refused), so a UUID seen on the wire cannot be replayed.

:class:`AudioSocketMap` rereads the file when it changes: appended lines are read from where
the last read stopped (a line not yet ended by a newline waits for the next read); a file
that shrank or was replaced (rotated) is read again from the start. Reads are bounded
(:data:`MAX_MAP_READ_BYTES` each, the newest lines kept), the entries too
(:data:`MAX_MAP_ENTRIES`, the oldest evicted), and every skipped line is counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.connectors.calls import bounded_metadata, call_id_ok

__all__ = [
    "MAX_MAP_ENTRIES",
    "MAX_MAP_LINE_CHARS",
    "MAX_MAP_READ_BYTES",
    "AudioSocketMap",
    "LegEntry",
    "parse_map_line",
]

logger = logging.getLogger(__name__)

#: most bytes read from the map file at once (a longer change: only its newest lines)
MAX_MAP_READ_BYTES = 4 * 1024 * 1024
#: most UUIDs remembered (the oldest lines are evicted first, counted)
MAX_MAP_ENTRIES = 100_000
#: longer lines are skipped (counted)
MAX_MAP_LINE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class LegEntry:
    """One line of the map: a UUID's call, role and parameters (``param.*`` metadata)."""

    uuid: str  # canonical lower-case form
    call_id: str
    role: str
    params: tuple[tuple[str, str], ...] = ()
    params_dropped: int = 0


def parse_map_line(line: str, roles: Sequence[str]) -> LegEntry | None:
    """One map line -> its entry; None for a blank or comment line; ValueError when bad."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if len(text) > MAX_MAP_LINE_CHARS:
        raise ValueError(f"longer than {MAX_MAP_LINE_CHARS} characters")
    fields = text.split()
    if len(fields) < 3:
        raise ValueError("needs UUID CALL_ID ROLE [KEY=VALUE ...]")
    raw_uuid, call_id, role, *rest = fields
    try:
        canonical = str(uuid.UUID(raw_uuid))
    except ValueError:
        raise ValueError(f"{raw_uuid[:40]!r} is not a UUID") from None
    if not call_id_ok(call_id):
        raise ValueError(f"call id {call_id[:40]!r} is not 1-128 letters, digits or _.:@+-")
    if role not in roles:
        raise ValueError(f"role {role[:40]!r} is not one of {', '.join(roles)}")
    pairs = [item.partition("=") for item in rest]
    if any(not sep for _, sep, _ in pairs):
        raise ValueError("parameters must be KEY=VALUE")
    kept, dropped = bounded_metadata(((k, v) for k, _, v in pairs), prefix="param.")
    return LegEntry(canonical, call_id, role, tuple(kept.items()), dropped)


@dataclass(slots=True)
class _Position:
    """Where the last read of the file stopped (the file is known by device and inode)."""

    device: int = -1
    inode: int = -1
    offset: int = 0


class AudioSocketMap:
    """The UUID -> leg map of one listener, from its file (loop; file reads in a thread).

    ``take(uuid)`` rereads the file if it changed and hands out the UUID's entry once: a UUID
    already taken is refused from then on. Not thread-safe; one reread at a time (a lock).
    """

    def __init__(self, path: Path, roles: Sequence[str]) -> None:
        self.path = Path(path)
        self.roles = tuple(roles)
        self._entries: OrderedDict[str, LegEntry] = OrderedDict()
        self._taken: OrderedDict[str, None] = OrderedDict()
        self._position = _Position()
        self._lock = asyncio.Lock()
        self.reloads = 0
        self.skipped_lines = 0
        self.evicted = 0
        self.read_errors = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "reloads": self.reloads,
                "skipped_lines": self.skipped_lines, "evicted": self.evicted,
                "read_errors": self.read_errors}

    def check_readable(self) -> None:
        """OSError when the file cannot be read (at start: fail early, not per call)."""
        with open(self.path, "rb"):
            pass

    async def take(self, leg_uuid: str) -> LegEntry | str:
        """The UUID's entry, handed out once; else why not: ``unknown_uuid`` or ``uuid_used``."""
        async with self._lock:
            await self._refresh()
        if leg_uuid in self._taken:
            return "uuid_used"
        entry = self._entries.pop(leg_uuid, None)
        if entry is None:
            return "unknown_uuid"
        self._taken[leg_uuid] = None
        while len(self._taken) > MAX_MAP_ENTRIES:
            self._taken.popitem(last=False)
        return entry

    async def _refresh(self) -> None:
        """Read what changed in the file since the last read (nothing when it did not)."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            self._read_failed(exc)
            return
        position = self._position
        same_file = (info.st_dev, info.st_ino) == (position.device, position.inode)
        if same_file and info.st_size == position.offset:
            return
        start = position.offset if same_file and info.st_size > position.offset else 0
        try:
            lines, end = await asyncio.to_thread(_read_lines, self.path, start)
        except OSError as exc:
            self._read_failed(exc)
            return
        if start == 0:
            self._entries.clear()  # a new or truncated file: its lines are the whole map
        self._position = _Position(info.st_dev, info.st_ino, end)
        self.reloads += 1
        self._add(lines, start)

    def _add(self, lines: list[str], start: int) -> None:
        bad: list[str] = []
        for line in lines:
            try:
                entry = parse_map_line(line, self.roles)
            except ValueError as exc:
                bad.append(str(exc))
                continue
            if entry is None:
                continue
            self._entries.pop(entry.uuid, None)  # a rewritten UUID moves to the newest end
            self._entries[entry.uuid] = entry
        while len(self._entries) > MAX_MAP_ENTRIES:
            self._entries.popitem(last=False)
            self.evicted += 1
        if bad:
            self.skipped_lines += len(bad)
            logger.warning("AudioSocket map %s: skipped %d bad line(s) read from byte %d; "
                           "first: %s", self.path, len(bad), start, bad[0])

    def _read_failed(self, exc: OSError) -> None:
        self.read_errors += 1
        logger.warning("AudioSocket map %s cannot be read (%s); UUIDs not read yet are "
                       "refused", self.path, exc.strerror or exc)


def _read_lines(path: Path, start: int) -> tuple[list[str], int]:
    """Whole lines from byte ``start`` on, at most MAX_MAP_READ_BYTES of the newest; end offset.

    Runs in a worker thread. A last line without its newline is left for the next read.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        begin = max(start, size - MAX_MAP_READ_BYTES)
        file.seek(begin)
        data = file.read(size - begin)
    cut = data.rfind(b"\n") + 1
    whole = data[:cut]
    if begin > start:  # the read began mid-file: its first line may be a piece of one
        whole = whole[whole.find(b"\n") + 1:]
    return whole.decode("utf-8", errors="replace").splitlines(), begin + cut
