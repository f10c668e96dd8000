"""Read-only JSON over the timeline store: ``GET /api/sessions``, ``/api/calls``, ``/api/timeline``.

Answers are made on the event loop; every store read runs in a worker thread of the loop's
default executor, on its own read-only SQLite connection (see :mod:`server.store`), so a slow
read never stalls live events. At most ``max_reads`` reads run at once; a request past that is
answered 503 at once (no queue builds up). Every answer is bounded: at most ``limit`` rows
(each endpoint has a default and a maximum), and a list goes on from a cursor (``before`` for
the newest-first lists, ``after`` for a timeline).

Parsing the query and shaping the JSON are pure functions; :class:`StoreApi` is the thin shell
that reads. ``server.app`` checks the ``view`` role (when tokens are configured) before it asks
for an answer. The wire shapes are documented in ``docs/protocol.md`` ("HTTP API").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from server.errors import ServerError
from server.store import (
    SessionInfo,
    StoredStream,
    read_session,
    read_session_page,
    read_stream_events,
    read_stream_openings,
)
from streamer.protocol.messages import StreamCloseMessage

__all__ = [
    "API_PATHS",
    "API_PREFIX",
    "ApiAnswer",
    "ApiRequestError",
    "CALLS_LIMIT",
    "MAX_CALL_PARTIES",
    "SESSIONS_LIMIT",
    "StoreApi",
    "TIMELINE_LIMIT",
    "group_calls",
    "parse_query",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
API_PATHS = ("/api/sessions", "/api/calls", "/api/timeline")
#: (default, maximum) of ``limit``: sessions and calls per page, events per timeline page
SESSIONS_LIMIT = (20, 200)
CALLS_LIMIT = (50, 200)
TIMELINE_LIMIT = (2000, 10000)
#: the most parties (streams) grouped into one listed call
MAX_CALL_PARTIES = 8

_PARAMS: dict[str, tuple[str, ...]] = {
    "/api/sessions": ("before", "limit"),
    "/api/calls": ("before", "call", "limit", "session", "state"),
    "/api/timeline": ("after", "limit", "session", "stream"),
}
_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # a stream or call name: no control characters
_CURSOR = re.compile(r"[0-9]{1,18}")
_STATES = ("all", "ended")
_T = TypeVar("_T")


class ApiRequestError(ServerError):
    """A request answered with an error ``status`` and ``{"error": code, "message": ...}``."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _bad(message: str) -> ApiRequestError:
    return ApiRequestError(HTTPStatus.BAD_REQUEST, "bad_parameter", message)


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """One answer: an HTTP status and its ``application/json`` body."""

    status: HTTPStatus
    body: bytes


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _error_body(code: str, message: str) -> bytes:
    """The JSON body of an error answer."""
    return _dumps({"error": code, "message": message})


# -- the query ---------------------------------------------------------------------------------


def parse_query(path: str, query: str) -> dict[str, str]:
    """The parameters of a request to ``path`` (one of API_PATHS); 400 for anything odd.

    Every parameter is optional and given at most once; unknown names are refused (a typo
    must not silently widen a query).
    """
    known = _PARAMS[path]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                          encoding="utf-8", errors="strict", max_num_fields=len(known))
    except ValueError as exc:  # also UnicodeDecodeError, and more fields than names known
        raise _bad(f"cannot read the query of {path}: {exc}; it takes at most one each of "
                   f"{', '.join(known)}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise _bad(f"unknown parameter {name[:40]!r} for {path}; known: {', '.join(known)}")
        if name in params:
            raise _bad(f"parameter {name!r} given twice")
        params[name] = value
    return params


def _limit(params: Mapping[str, str], bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    text = params.get("limit")
    if text is None:
        return default
    if not _CURSOR.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise _bad(f"limit must be an integer 1..{maximum}, got {text[:40]!r}")
    return int(text)


def _cursor(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not _CURSOR.fullmatch(text):
        raise _bad(f"{name} must be a cursor from an earlier page (a whole number >= 0), "
                   f"got {text[:40]!r}")
    return int(text)


def _name(params: Mapping[str, str], name: str, *, required: bool) -> str | None:
    text = params.get(name)
    if text is None:
        if required:
            raise _bad(f"parameter {name!r} is required")
        return None
    pattern = _SESSION_ID if name == "session" else _NAME
    if not pattern.fullmatch(text):
        allowed = ("1-64 letters, digits or _ . : -" if name == "session"
                   else "1-256 characters, no control characters")
        raise _bad(f"{name} must be {allowed}, got {text[:40]!r}")
    return text


# -- the JSON shapes ---------------------------------------------------------------------------


def _session_json(cursor: int, info: SessionInfo, *, current: str) -> dict[str, Any]:
    return {"session": info.session, "started_at": info.started_at, "model": info.model,
            "labels": list(info.labels), "window_s": info.window_s, "hop_s": info.hop_s,
            "sample_rate_hz": info.sample_rate_hz, "current": info.session == current,
            "cursor": cursor}


def _call_of(stream: StoredStream) -> str:
    call = stream.opened.metadata.get("call")
    return call if call else stream.opened.stream


def _role_of(stream: StoredStream) -> str:
    role = stream.opened.metadata.get("role")
    if role:
        return role
    name = stream.opened.stream
    return name.split("/", 1)[1] if "/" in name[1:] else name


def _stream_state(stream: StoredStream, current: str) -> str:
    if stream.closed is not None:
        return "ended"
    # no close recorded: live in the running server's session, else its run stopped first
    return "live" if stream.session == current else "unfinished"


def _stream_json(stream: StoredStream, current: str) -> dict[str, Any]:
    opened, closed = stream.opened, stream.closed
    return {
        "stream": opened.stream, "role": _role_of(stream), "open_id": stream.open_id,
        "state": _stream_state(stream, current), "opened_at": opened.wall_time,
        "sample_rate_hz": opened.sample_rate_hz, "metadata": dict(opened.metadata),
        "closed_at": None if closed is None else closed.wall_time,
        "end_s": None if closed is None else closed.end_s,
        "reason": None if closed is None else closed.reason,
        "windows": None if closed is None else closed.windows,
        "windows_dropped": None if closed is None else closed.windows_dropped,
    }


def _call_json(parties: Sequence[StoredStream], current: str) -> dict[str, Any]:
    streams = [_stream_json(s, current) for s in parties]
    states = {s["state"] for s in streams}
    state = "live" if "live" in states else ("ended" if states == {"ended"} else "unfinished")
    closed = [s["closed_at"] for s in streams if s["closed_at"] is not None]
    return {
        "session": parties[0].session, "call": _call_of(parties[0]), "state": state,
        "started_at": min(s["opened_at"] for s in streams),
        "ended_at": max(closed) if state == "ended" else None,
        "streams": streams,
    }


def group_calls(
    openings: Sequence[StoredStream], *, current: str, limit: int, complete: bool
) -> tuple[list[dict[str, Any]], int | None]:
    """Stream openings (newest first) as calls, newest first, and the next page's cursor.

    A call's parties are opened one after another (one ``ingest_start``, one connector call),
    so consecutive openings of the same session and call id with distinct roles are one call
    (at most MAX_CALL_PARTIES). ``complete`` says no older openings exist; otherwise the
    oldest group may have parties on the next page and is left for it.
    """
    groups: list[list[StoredStream]] = []
    for stream in openings:
        group = groups[-1] if groups else None
        if group is not None and len(group) < MAX_CALL_PARTIES and (
            group[0].session == stream.session and _call_of(group[0]) == _call_of(stream)
            and _role_of(stream) not in {_role_of(s) for s in group}
        ):
            group.append(stream)
        else:
            groups.append([stream])
    if not complete and groups:
        groups.pop()
    shown = groups[:limit]
    more = not complete or len(groups) > limit
    cursor = min(s.open_id for group in shown for s in group) if more and shown else None
    # parties in the order they were opened (channel order)
    return [_call_json(group[::-1], current) for group in shown], cursor


# -- the shell ---------------------------------------------------------------------------------


class StoreApi:
    """The JSON API of one server run over its store. Loop-bound; reads in worker threads.

    ``store_path`` None (``--no-store``): every endpoint answers 404 ``no_store``. ``session``
    is the running server's session: its streams without a close are live. ``counters``
    counts requests and refusals by kind (shown in the admin ``/healthz`` under ``api``).
    """

    def __init__(self, store_path: Path | None, *, session: str, max_reads: int = 2) -> None:
        if max_reads < 1:
            raise ServerError(f"max_reads must be >= 1, got {max_reads!r}")
        self.store_path = store_path
        self.session = session
        self.max_reads = max_reads
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "bad_requests", "not_found", "busy", "store_errors"), 0)
        self._reads = 0

    async def answer(self, path: str, query: str) -> ApiAnswer:
        """The answer to ``GET path?query`` (path under API_PREFIX)."""
        self.counters["requests"] += 1
        try:
            body = await self._route(path, query)
        except ApiRequestError as exc:
            kind = {HTTPStatus.BAD_REQUEST: "bad_requests", HTTPStatus.NOT_FOUND: "not_found"}
            counter = kind.get(exc.status, "busy" if exc.code == "busy" else "store_errors")
            self.counters[counter] += 1
            return ApiAnswer(exc.status, _error_body(exc.code, str(exc)))
        return ApiAnswer(HTTPStatus.OK, body)

    async def _route(self, path: str, query: str) -> bytes:
        if path not in _PARAMS:
            raise ApiRequestError(HTTPStatus.NOT_FOUND, "not_found",
                                  f"no API endpoint {path[:80]}; known: {', '.join(API_PATHS)}")
        params = parse_query(path, query)
        if self.store_path is None:
            raise ApiRequestError(HTTPStatus.NOT_FOUND, "no_store",
                                  "this server keeps no timeline store (started with --no-store)")
        if path == "/api/sessions":
            return await self._sessions(self.store_path, params)
        if path == "/api/calls":
            return await self._calls(self.store_path, params)
        return await self._timeline(self.store_path, params)

    async def _sessions(self, store: Path, params: Mapping[str, str]) -> bytes:
        limit = _limit(params, SESSIONS_LIMIT)
        rows = await self._read(functools.partial(
            read_session_page, store, limit=limit + 1, before=_cursor(params, "before")))
        shown = rows[:limit]
        return _dumps({
            "sessions": [_session_json(c, info, current=self.session) for c, info in shown],
            "next_before": shown[-1][0] if len(rows) > limit else None,
        })

    async def _calls(self, store: Path, params: Mapping[str, str]) -> bytes:
        limit = _limit(params, CALLS_LIMIT)
        state = params.get("state", "all")
        if state not in _STATES:
            raise _bad(f"state must be one of {', '.join(_STATES)}, got {state[:40]!r}")
        fetch = limit * MAX_CALL_PARTIES + 1
        openings = await self._read(functools.partial(
            read_stream_openings, store, limit=fetch, session=_name(params, "session",
                                                                     required=False),
            call=_name(params, "call", required=False), before=_cursor(params, "before"),
            skip_open_of=self.session if state == "ended" else None))
        calls, cursor = group_calls(openings, current=self.session, limit=limit,
                                    complete=len(openings) < fetch)
        return _dumps({"calls": calls, "next_before": cursor})

    async def _timeline(self, store: Path, params: Mapping[str, str]) -> bytes:
        session = _name(params, "session", required=True)
        stream = _name(params, "stream", required=True)
        assert session is not None and stream is not None
        limit = _limit(params, TIMELINE_LIMIT)
        after = _cursor(params, "after") or 0
        info, events = await self._read(functools.partial(
            _timeline_rows, store, session=session, stream=stream, limit=limit, after=after))
        if info is None:
            raise ApiRequestError(HTTPStatus.NOT_FOUND, "not_found",
                                  f"no session {session!r} in the store")
        if not events and after == 0:
            raise ApiRequestError(HTTPStatus.NOT_FOUND, "not_found",
                                  f"no stream {stream[:80]!r} in session {session!r}")
        closed = bool(events) and events[-1][1] == StreamCloseMessage.TYPE
        head = _dumps({
            "session": session, "stream": stream, "model": info.model,
            "labels": list(info.labels), "window_s": info.window_s, "hop_s": info.hop_s,
            "after": after, "closed": closed,
            # what follows this page (a full page, or a live stream's events to come)
            "next_after": events[-1][0] if events and not closed else None,
        })
        # the recorded frames go out as recorded (fields this version does not know included)
        frames = b",".join(frame.encode() for _, _, frame in events)
        return head[:-1] + b',"events":[' + frames + b"]}"

    async def _read(self, read: Callable[[], _T]) -> _T:
        """Run one store read in a worker thread (503 when ``max_reads`` are running)."""
        if self._reads >= self.max_reads:
            raise ApiRequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy",
                                  f"{self.max_reads} store reads are running; try again shortly")
        self._reads += 1
        future = asyncio.get_running_loop().run_in_executor(None, read)
        future.add_done_callback(self._read_done)
        try:
            # shielded: a request that goes away leaves its read running, and its slot taken
            # until the thread is done, so never more than max_reads threads read at once
            return await asyncio.shield(future)
        except ServerError as exc:
            logger.warning("API store read failed: %s", exc)
            raise ApiRequestError(HTTPStatus.SERVICE_UNAVAILABLE, "store_error",
                                  str(exc)) from exc

    def _read_done(self, future: asyncio.Future[Any]) -> None:
        self._reads -= 1
        if not future.cancelled():
            future.exception()  # retrieved here when the request went away first


def _timeline_rows(
    store: Path, *, session: str, stream: str, limit: int, after: int
) -> tuple[SessionInfo | None, list[tuple[int, str, str]]]:
    """The session's info and one page of the stream's events (worker thread)."""
    info = read_session(store, session)
    if info is None:
        return None, []
    return info, read_stream_events(store, session=session, stream=stream, limit=limit,
                                    after=after)
