"""Long calls whose work runs in its own thread and whose messages stream back as the work
posts them: a study's reveals, a synthesizer's progress."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

Post = Callable[[Any], None]
"""Sends one message to the caller while the work goes on."""


def streamed(work: Callable[[Post], Any], context: grpc.ServicerContext, *,
             name: str) -> Iterator[Any]:
    """Run `work(post)` in a thread and yield what it posts, then what it returns; its
    error is raised in the call's own thread (so the call's status reports it). A call
    that ends early (cancelled, or past its deadline) stops the stream."""
    outbox: queue.Queue = queue.Queue()
    context.add_callback(lambda: outbox.put(("end", None)))

    def run() -> None:
        try:
            outbox.put(("last", work(lambda message: outbox.put(("post", message)))))
        except Exception as error:  # handed to the call's own thread, which reports it
            outbox.put(("error", error))

    threading.Thread(target=run, daemon=True, name=name).start()
    while True:
        kind, item = outbox.get()
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
