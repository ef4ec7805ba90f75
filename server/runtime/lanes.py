"""Work lanes: routing never waits behind bulk work (embeddings, uploads, document indexing).

Before lanes, everything ran on asyncio's default thread pool and one encoder: six anonymous
`/v1/embeddings` calls of 120 long inputs took every pool thread, the shared tokenizer's lock and both
cores, and one routing decision took 72 s instead of 8 ms. Now:

- `routing` is a small pool that only the routing encoder's batches use.
- `bulk` is one thread at the lowest CPU priority (Linux `nice` 19 for that thread alone), so the
  scheduler gives routing and generation the cores whenever they want them; bulk jobs run one at a time
  in arrival order. After a job it hands freed heap back to the OS (`malloc_trim`), so a burst of large
  requests does not keep the process's memory high.
- the bulk encoder (`bulk_encoder_for`) is a twin of the shared query encoder for bulk work: its own
  tokenizer (and lock), and its own ONNX Runtime session: one thread (so bulk work never holds every
  core; `bench/isolation.py` measured a lower routing p99 under abuse than with two), built on the
  bulk thread so that it inherits the low priority, and without a memory arena. Same weights, so its
  vectors are the shared encoder's (to ~1e-6). It costs about 100 MB, built at start so that it is part
  of the baseline.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from experts.encoders.query import QueryEncoder

log = logging.getLogger(__name__)
T = TypeVar("T")
BULK_NICENESS = 19


def _lower_priority() -> None:
    try:  # on Linux, setpriority with a thread id changes that thread only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICENESS)
    except (AttributeError, OSError):  # not Linux: the lane still serialises bulk work
        log.info("could not lower the bulk lane's CPU priority on this platform")


def _trimmer() -> Callable[[], None]:
    """glibc's malloc_trim(0): return freed heap pages to the OS (a no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    return (lambda: trim(0)) if trim is not None else (lambda: None)


class Lanes:
    def __init__(self, routing_threads: int = 2) -> None:
        self.routing = ThreadPoolExecutor(routing_threads, thread_name_prefix="switchyard-routing")
        self._bulk = ThreadPoolExecutor(1, thread_name_prefix="switchyard-bulk", initializer=_lower_priority)
        self._shared: QueryEncoder | None = None
        self._twin: QueryEncoder | None = None
        self._trim = _trimmer()

    async def build_bulk_encoder(self, shared: QueryEncoder, build: Callable[[], QueryEncoder]) -> None:
        """Build the twin of `shared` on the bulk thread: threads it starts (ONNX Runtime's) inherit nice 19."""
        self._shared, self._twin = shared, await self.on_bulk(build)

    async def on_routing(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.routing, functools.partial(fn, *args))

    async def on_bulk(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._bulk, functools.partial(self._job, fn, *args))

    def _job(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        finally:
            self._trim()

    def bulk_encoder_for(self, encoder: T) -> T | QueryEncoder:
        """What bulk work encodes with on this lane: the twin for the shared encoder, any other as it is."""
        return self._twin if encoder is self._shared and self._twin is not None else encoder

    def close(self) -> None:
        self.routing.shutdown(wait=False, cancel_futures=True)
        self._bulk.shutdown(wait=False, cancel_futures=True)
