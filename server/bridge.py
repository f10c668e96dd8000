"""From the engine's threads to the event loop (``sink`` on any thread; the rest on the loop).

The engine calls :meth:`ThreadBridge.sink` from its worker or feeding threads; ``sink`` only
hands the event to the loop with ``call_soon_threadsafe``, so it is cheap and never blocks the
engine. Events from one thread keep their order (``call_soon_threadsafe`` is FIFO), and
:meth:`flush` waits until everything handed over before it has run on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streamer.events import Event

__all__ = ["ThreadBridge"]


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
        try:
            loop.call_soon_threadsafe(self.target, event)
        except RuntimeError:  # the loop has been closed: too late to publish
            self.events_lost += 1

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
