"""Live events of training runs, shared by every SSE stream of a run in this process.

While a run has open streams, ONE asyncio task polls the event bus for it (every `POLL_S`) and
the database (every `DB_CHECK_S`, and when the bus says `complete`); each stream waits on the
feed instead of polling on its own, so 200 open streams cost one poll loop, not 200 — and no
stream makes a blocking call on the event loop (the bus is awaited, the database is read in a
thread). The feed ends when its last stream goes, when the database says the run ended, or when
the app is stopping; its streams wake only when it changes or ends (or for their keep-alive).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from appliance.store.status import ACTIVE

log = logging.getLogger("aistudio.training")

POLL_S = 0.1
DB_CHECK_S = 2.0
KEPT_EVENTS = 5000  # as many as the bus keeps per run; a very slow stream may miss old log lines

Snapshot = tuple[str, list[dict], dict]  # (status, epoch history, {"status", "best_metric", "error"})


class RunFeed:
    def __init__(self, feeds: Feeds, run_id: str, bus, snapshot: Callable[[], Snapshot]):
        self.run_id = run_id
        self.events: list[dict] = []  # the run's latest bus events, in order
        self.base = 0  # how many events were dropped from the front of `events`
        self.final: Snapshot | None = None  # set once the database says the run is no longer active
        self.broken = False  # the bus or the database failed: streams end (browsers reconnect)
        self.subscribers = 0
        self._feeds, self._bus, self._snapshot = feeds, bus, snapshot
        self._changed = asyncio.Event()

    def since(self, seen: int) -> tuple[list[dict], int]:
        """The events after the first `seen` of the feed, and the new count seen."""
        return self.events[max(seen - self.base, 0):], self.base + len(self.events)

    async def wait(self, timeout: float) -> None:
        """Until the feed changes, or `timeout` seconds."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        cursor, last_db = 0, time.monotonic()
        try:
            while self.subscribers > 0 and not self._feeds.stopping.is_set():
                batch = await self._bus.events_after.remote(self.run_id, cursor)
                if batch:
                    cursor = batch[-1]["seq"]
                    self.events.extend(batch)
                    if len(self.events) > KEPT_EVENTS:
                        drop = len(self.events) - KEPT_EVENTS
                        del self.events[:drop]
                        self.base += drop
                    self._notify()
                now = time.monotonic()
                # The bus may miss a run that died, and epochs reach the database first: it decides the end.
                if now - last_db > DB_CHECK_S or any(ev["type"] == "complete" for ev in batch):
                    last_db = now
                    snapshot = await asyncio.to_thread(self._snapshot)
                    if snapshot[0] not in ACTIVE:
                        self.final = snapshot
                        return
                await asyncio.sleep(POLL_S)
        except Exception:
            log.exception("Live feed of run %s failed", self.run_id)
            self.broken = True
        finally:
            self._feeds.forget(self)
            self._notify()


class Feeds:
    """The feeds of this process, one per run with open streams (used from the event loop only)."""

    def __init__(self, stopping: threading.Event):
        self.stopping = stopping
        self._feeds: dict[str, RunFeed] = {}
        self._tasks: set[asyncio.Task] = set()

    def subscribe(self, run_id: str, bus, snapshot: Callable[[], Snapshot]) -> RunFeed:
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = RunFeed(self, run_id, bus, snapshot)
            feed.subscribers += 1
            task = asyncio.get_running_loop().create_task(feed.run())
            self._tasks.add(task)  # a reference, so the task is not garbage-collected mid-run
            task.add_done_callback(self._tasks.discard)
        else:
            feed.subscribers += 1
        return feed

    @staticmethod
    def unsubscribe(feed: RunFeed) -> None:
        feed.subscribers -= 1

    def forget(self, feed: RunFeed) -> None:
        if self._feeds.get(feed.run_id) is feed:
            del self._feeds[feed.run_id]
