"""Admission limits: a fixed number of slots for a kind of long request ("try one image", live
streams). Taking a slot never waits: a request beyond the limit is refused at once (with
`Retry-After`), so a burst can neither queue up in the server's threadpool nor hold the event loop.
Thread-safe: sync routes take slots from the threadpool, async ones from the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from appliance.store.errors import AppError


class Slots:
    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def take(self, refuse: Callable[[int], AppError]) -> Callable[[], None]:
        """Take a slot or raise `refuse(limit)`; returns the release function (safe to call twice)."""
        if not self.try_take():
            raise refuse(self.limit)
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if not done.is_set():
                    done.set()
                    self._used -= 1

        return release

    @contextmanager
    def hold(self, refuse: Callable[[int], AppError]) -> Iterator[None]:
        release = self.take(refuse)
        try:
            yield
        finally:
            release()
