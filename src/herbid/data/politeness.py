"""Being polite to other people's servers: a cap on requests per host, and pauses when a host asks.

A dataset build fetches from hundreds of hosts, a few of which hold most of the URLs. A
global worker pool alone would point all its workers at the biggest host; herbarium image
servers are small and rate-limit (or fall over). Two things keep herbid polite:

* :func:`map_per_host` runs the work on one thread pool but hands a worker a URL only while
  its host has fewer than ``per_host`` URLs in progress, round-robin over hosts. No worker
  ever blocks waiting for a busy host, so one slow or throttling host holds at most
  ``per_host`` workers and the others keep working.
* :class:`HostGate` remembers, per host, until when that host asked to be left alone
  (``Retry-After`` on 429 or 503). Every request to the host waits for it, not only the one
  that was answered 429, and new URLs for that host do too.

A host is the URL's ``host[:port]`` (the first hop; a redirect to another host is not
counted against that host).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import httpx

__all__ = ["DEFAULT_PER_HOST", "HostGate", "host_key", "map_per_host"]

#: Requests in flight to one host at once, by default (img2dataset-scale crawlers use 1 to 4).
DEFAULT_PER_HOST = 2

T = TypeVar("T")
R = TypeVar("R")


def host_key(url: str) -> str:
    """The politeness key of ``url``: lower-case host, and the port when one is given."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return ""  # refused before any request; one shared key is harmless
    host = parsed.host.lower()
    return f"{host}:{parsed.port}" if parsed.port is not None else host


class HostGate:
    """Per-host pauses (from ``Retry-After``) and, for engines that bring their own threads, slots.

    Thread-safe. :meth:`slot` blocks until one of the host's ``per_host`` slots is free;
    :func:`map_per_host` does not need it (it never starts more than ``per_host`` per host).
    ``clock`` is monotonic seconds; tests may replace it.
    """

    def __init__(self, per_host: int = DEFAULT_PER_HOST, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, not {per_host}")
        self.per_host = per_host
        self.clock = clock
        self._lock = threading.Condition()
        self._paused_until: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    def pause(self, host: str, seconds: float) -> float:
        """Keep every request to ``host`` back for ``seconds`` from now; return when that is.

        A pause only ever extends: a shorter ``Retry-After`` does not cut a longer one short.
        The returned time is this pause's own end, so its caller can tell whether somebody
        else has since paused the host for longer (see :meth:`wait_open`).
        """
        until = self.clock() + max(0.0, seconds)
        with self._lock:
            self._paused_until[host] = max(self._paused_until.get(host, 0.0), until)
        return until

    def paused_until(self, host: str) -> float:
        """When ``host``'s current pause ends (0 when it was never paused)."""
        with self._lock:
            return self._paused_until.get(host, 0.0)

    def wait_open(self, host: str, sleep: Callable[[float], None], waited_until: float = 0.0) -> float:
        """Sleep (with ``sleep``) until ``host``'s pause is over; return the seconds asked to sleep.

        ``waited_until`` is the end of a pause the caller has already slept through (its own
        back-off after a 429): only a longer pause set since then makes it wait again. One
        sleep, not a loop, so that a stand-in ``sleep`` that does not pass time still returns.
        """
        until = self.paused_until(host)
        if until <= waited_until:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            return 0.0
        sleep(left)
        return left

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of ``host``'s ``per_host`` slots for the duration (blocking until one is free)."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight.get(host, 0) < self.per_host)
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight[host] - 1
                if left:
                    self._in_flight[host] = left
                else:
                    del self._in_flight[host]
                self._lock.notify_all()


def map_per_host(
    work: Callable[[T], R],
    items: Iterable[T],
    key: Callable[[T], Hashable],
    *,
    workers: int,
    per_host: int = DEFAULT_PER_HOST,
) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` as each finishes, with at most ``per_host`` items per key running.

    One pool of ``workers`` threads; hosts take turns (round-robin), so a host with a
    million URLs does not starve one with ten. Scheduling costs O(1) per item, whatever the
    number of hosts. ``work`` should not raise: an exception is re-raised here, and the
    items not yet started are then dropped.
    """
    if per_host < 1:
        raise ValueError(f"per_host must be at least 1, not {per_host}")
    pending: dict[Hashable, deque[T]] = {}
    for item in items:
        pending.setdefault(key(item), deque()).append(item)
    running_per_host: dict[Hashable, int] = {}
    # Hosts that have pending items and a free slot, in turn order; a host is in it at most once.
    ready: deque[Hashable] = deque(pending)
    queued = set(ready)

    def offer(host: Hashable) -> None:
        if host not in queued and pending.get(host) and running_per_host.get(host, 0) < per_host:
            ready.append(host)
            queued.add(host)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="herbid-fetch") as pool:
        running: dict[Future[R], tuple[T, Hashable]] = {}
        while ready or running:
            while ready and len(running) < max(1, workers):
                host = ready.popleft()
                queued.discard(host)
                item = pending[host].popleft()
                if not pending[host]:
                    del pending[host]
                running_per_host[host] = running_per_host.get(host, 0) + 1
                running[pool.submit(work, item)] = (item, host)
                offer(host)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item, host = running.pop(future)
                running_per_host[host] -= 1
                offer(host)
                yield item, future.result()
