"""Batches prepared ahead of the training loop, in a background thread.

While the device runs step t, a thread draws the next batches from the data
iterators, stacks them (K members) and transfers them (``device_put``), ``depth``
batches ahead. Each prepared batch carries the iterators' positions *after* it was
drawn, so a checkpoint records exactly the batches the loop consumed, not those the
thread drew ahead: resume stays exact.

An exception in the thread (a data error, a test's simulated kill) is raised in the
loop when it asks for the batch that failed, at the same step as without prefetching.
``depth = 0`` draws each batch in the loop itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_DONE = object()


class Prefetcher:
    """``next()`` returns ``produce()``'s results in order, computed ``depth`` ahead."""

    def __init__(self, produce: Callable[[], Any], depth: int):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.produce = produce
        self.depth = depth
        self._stop = threading.Event()
        self._thread = None
        if depth:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="rnnjax-prefetch",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = (True, self.produce())
            except BaseException as e:  # noqa: BLE001 (re-raised in the loop's thread)
                item = (False, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not item[0]:
                return

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        if self._thread is None:
            return self.produce()
        ok, value = self._queue.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
