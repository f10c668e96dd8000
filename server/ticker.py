"""A periodic task that publishes the stats (event loop).

:class:`StatsTicker` owns one task that calls ``tick`` every ``interval_s`` until closed; a
tick that fails is logged and the next one tried, so one bad tick never ends the stats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["StatsTicker"]

logger = logging.getLogger(__name__)


class StatsTicker:
    """Calls ``tick`` every ``interval_s`` on the loop. ``close()`` is idempotent."""

    def __init__(self, tick: Callable[[], None], *, interval_s: float) -> None:
        self.tick = tick
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> StatsTicker:
        """Start the task (once) on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stats")
        return self

    async def close(self) -> None:
        """Stop the task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never raises; the task's own CancelledError stays there

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.tick()
            except Exception:  # one bad tick must not end the stats for the rest of the run
                logger.exception("stats tick failed; trying again next interval")
