"""Long calls whose work runs in its own thread and whose messages stream back as the work
posts them (a study's reveals, a synthesizer's progress), and how many of them each
analyst may have under way."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from services.status import CallError

Post = Callable[[Any], None]
"""Sends one message to the caller while the work goes on."""


def streamed(work: Callable[[Post], Any], context: grpc.ServicerContext, *, name: str,
             deadline: float, limit: str) -> Iterator[Any]:
    """Run `work(post)` in a thread and yield what it posts, then what it returns; its
    error is raised in the call's own thread (so the call's status reports it). A call
    that ends early (cancelled, or past its deadline) stops the stream, and so does the
    server's own `deadline` (monotonic clock; `limit` names the setting that fixed it):
    nothing a party withholds, an analyst's answer included, holds a call open longer."""
    outbox: queue.Queue = queue.Queue()
    context.add_callback(lambda: outbox.put(("end", None)))

    def run() -> None:
        try:
            outbox.put(("last", work(lambda message: outbox.put(("post", message)))))
        except Exception as error:  # handed to the call's own thread, which reports it
            outbox.put(("error", error))

    threading.Thread(target=run, daemon=True, name=name).start()
    while True:
        try:
            kind, item = outbox.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the call ran past the server's deadline ({limit})") from None
        if kind == "post":
            yield item
        elif kind == "last":
            yield item
            return
        elif kind == "error":
            raise item
        else:
            return


def deadline_of(context: grpc.ServicerContext, default_s: float) -> float:
    """When the call must end (monotonic clock): its own deadline, else the default."""
    remaining = context.time_remaining()
    limit = default_s if remaining is None else min(remaining, default_s)
    return time.monotonic() + limit


class Runs:
    """How many runs each analyst has under way: at most `limit` at once, so that one
    analyst cannot take every thread of the coordinator and its sites."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def under_way(self) -> int:
        """Runs under way, of every analyst."""
        with self._lock:
            return sum(self._running.values())

    @contextlib.contextmanager
    def admitted(self, analyst: str) -> Iterator[None]:
        """Hold one of the analyst's places for the block; refuse past the limit."""
        with self._lock:
            if self._running.get(analyst, 0) >= self.limit:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"analyst {analyst!r} already has {self.limit} runs under way "
                                "(the coordinator's limits.runs_per_analyst); wait for one to "
                                "finish")
            self._running[analyst] = self._running.get(analyst, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[analyst] -= 1
