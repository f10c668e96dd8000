"""From the engine's threads to the event loop (``sink`` on any thread; the rest on the loop).

The engine calls :meth:`ThreadBridge.sink` from its worker or feeding threads; ``sink`` only
appends the event to a queue and, when the queue was idle, asks the loop (one
``call_soon_threadsafe``) to deliver what is queued, so it is cheap and never blocks the engine,
and a burst of events (a batch of windows, 1,000 streams) costs one loop wake-up, not one each.
Events keep the order they were handed over in (one queue, delivered first in first out), and
:meth:`flush` waits until everything handed over before it has run on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from streamer.events import Event

__all__ = ["ThreadBridge"]

logger = logging.getLogger(__name__)


class ThreadBridge:
    """Hands engine events to ``target`` on the loop that called :meth:`start`.

    Events handed over before ``start`` or after ``close`` are dropped and counted in
    ``events_lost`` (there is no loop to run them on, or nobody to publish them).
    """

    def __init__(self, target: Callable[[Event], None]) -> None:
        self.target = target
        self.events_lost = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._queue: deque[Event] = deque()  # handed over, not yet delivered (append/popleft)
        self._scheduled = False  # a delivery is scheduled on the loop and has not started

    def start(self) -> ThreadBridge:
        """Bind to the running loop."""
        self._loop = asyncio.get_running_loop()
        return self

    def close(self) -> None:
        """Drop whatever arrives from now on (idempotent)."""
        self._closed = True

    def sink(self, event: Event) -> None:
        """Thread-safe and cheap: hand ``event`` to the loop (called by the engine's threads)."""
        loop = self._loop
        if loop is None or self._closed:
            self.events_lost += 1
            return
        self._queue.append(event)
        if self._scheduled:
            return  # the delivery already scheduled has not started: it takes this one too
        # set before scheduling: the delivery clears it before it takes the first event, so an
        # event appended after that schedules a delivery of its own (at worst one too many)
        self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop has been closed: too late to publish
            self._scheduled = False
            self.events_lost += len(self._queue)
            self._queue.clear()

    def _deliver(self) -> None:
        """On the loop: hand every queued event to ``target``, in order."""
        self._scheduled = False
        queue, target = self._queue, self.target
        while queue:
            event = queue.popleft()
            try:
                target(event)
            except Exception:
                logger.exception("publishing %s failed", type(event).__name__)

    async def flush(self) -> None:
        """Wait until every event handed to :meth:`sink` before this call has been delivered."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        # FIFO: this runs after every delivery already scheduled from any thread
        loop.call_soon_threadsafe(_set_done, done)
        await done


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
