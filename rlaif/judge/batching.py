"""How the judge meets many callers at once.

- `MicroBatcher`: concurrent awaits (a reward server's requests, TRL's async reward functions) are
  gathered into one call of a batch function. The first submission opens a window of `max_wait`
  seconds (or until `max_units` units wait); everything submitted by then goes to the engine as one
  batch, on one worker thread, while the event loop keeps accepting the next requests. A batch that
  fails is replayed a submission at a time, so one bad request fails alone.
- `isolated`: a batch call whose request failed for good (`RequestFailed`) is retried a unit at a
  time; units that still fail get None and their reason, never a silent value.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from rlaif.errors import RequestFailed


class MicroBatcher:
    """`await submit(units)` -> `fn(all units gathered)`'s results for these units."""

    def __init__(self, fn: Callable[[list], Sequence], *, max_wait: float = 0.01, max_units: int = 256,
                 name: str = "judge"):
        self.fn, self.max_wait, self.max_units = fn, max_wait, max_units
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"rlaif-{name}")
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._flush: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # engine batches run, and units in them (for logs and benchmarks)
        self.units = 0

    async def submit(self, units: Sequence) -> list:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop: nothing pending belongs to it
            self._loop, self._pending, self._flush = loop, [], None
        future = loop.create_future()
        self._pending.append((list(units), future))
        if sum(len(u) for u, _ in self._pending) >= self.max_units:
            self._start_flush(now=True)
        elif self._flush is None:
            self._start_flush(now=False)
        return await future

    def _start_flush(self, now: bool) -> None:
        if self._flush is not None and now:
            self._flush.cancel()
        self._flush = asyncio.ensure_future(self._run(0.0 if now else self.max_wait))

    async def _run(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        batch, self._pending, self._flush = self._pending, [], None
        if not batch:
            return
        loop = asyncio.get_running_loop()
        flat = [u for units, _ in batch for u in units]
        try:
            results = await loop.run_in_executor(self._pool, self._call, flat)
        except Exception:  # noqa: BLE001 - replay each submission alone, so only the bad one fails
            for units, future in batch:
                try:
                    one = await loop.run_in_executor(self._pool, self._call, units)
                except Exception as e:  # noqa: BLE001 - that submission's own error, to its caller
                    if not future.done():
                        future.set_exception(e)
                else:
                    if not future.done():
                        future.set_result(one)
            return
        start = 0
        for units, future in batch:
            if not future.done():
                future.set_result(results[start:start + len(units)])
            start += len(units)

    def _call(self, units: list) -> list:
        results = list(self.fn(units))
        if len(results) != len(units):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(units)} units")
        self.batches += 1
        self.units += len(units)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def isolated(call: Callable[[list], Sequence], units: list, concurrent: bool) -> tuple[list, list[str | None]]:
    """`call(units)` with per-unit failures: on `RequestFailed` every unit is tried alone (in threads
    when `concurrent`). -> (results with None for a failed unit, the failure reasons)."""
    try:
        return list(call(units)), [None] * len(units)
    except RequestFailed:
        pass

    def one(u: Any):
        try:
            return call([u])[0], None
        except RequestFailed as e:
            return None, e.reason

    if concurrent and len(units) > 1:
        with ThreadPoolExecutor(min(len(units), 32), thread_name_prefix="rlaif-judge") as pool:
            done = list(pool.map(one, units))
    else:
        done = [one(u) for u in units]
    return [d[0] for d in done], [d[1] for d in done]


__all__ = ["MicroBatcher", "isolated"]
