"""`asyncio.run` for tests that may share the process with Playwright's sync API: its session-wide
browser keeps an event loop running in the main thread, so the coroutine runs in a thread of its own."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


def run_async(coro):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
