"""Overall deadlines and stall rules for registry transfers, enforced from outside the read.

``requests`` bounds each socket read (``timeout``) and nothing else: a server that sends one
byte every few seconds never trips it, and urllib3 blocks in ``read(amt)`` until ``amt`` bytes
have arrived, so checking the clock between chunks comes too late as well. A :class:`Watch`
therefore runs a small monitor thread. While the watch is active, every connection its thread
sends a request on is registered with it (by the connection classes :class:`WatchedAdapter`
installs), from ``request()`` until the pool takes the connection back. When the deadline
passes or the transfer stalls, the monitor shuts those sockets down: the blocked send or read
fails at once, and leaving the watch turns whatever error that caused into one
:class:`~orchestrator.errors.RegistryError` that says what was too slow, where, and what to do.

Two rules, chosen per exchange:

* a **deadline** for small exchanges (manifests, configs, tokens, listings, error answers):
  request, answer headers and body together must be done within ``deadline_seconds``;
* a **stall rule** for blobs (:class:`StallRule`): over every sliding window of
  ``window_seconds``, at least ``min_bytes_per_second * window_seconds`` bytes must move, as
  counted by :meth:`Watch.progress`. A slow but steady link passes; a trickle or silence does
  not. The first window starts with the request, so the wait for the first byte counts.

Not covered: the TCP connect itself (bounded by the connect timeout) and name resolution.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from orchestrator.errors import RegistryError

log = logging.getLogger(__name__)

# Defaults of the settings registry_deadline_seconds, registry_stall_seconds and
# registry_min_bytes_per_second (orchestrator/settings.py repeats them; a test keeps them equal).
DEFAULT_DEADLINE_SECONDS = 60.0
DEFAULT_STALL_SECONDS = 60.0
DEFAULT_MIN_BYTES_PER_SECOND = 16 * 1024.0

_SETTINGS_HINT_DEADLINE = "DMR_REGISTRY_DEADLINE_SECONDS sets this limit"
_SETTINGS_HINT_STALL = (
    "DMR_REGISTRY_STALL_SECONDS and DMR_REGISTRY_MIN_BYTES_PER_SECOND set this rule"
)
# After a trip, connections registered late (a retry inside the watch) are cut this often.
_TRIPPED_TICK_SECONDS = 0.05

_local = threading.local()


def _stack() -> list[Watch]:
    """Return the watches active in this thread, innermost last."""
    stack: list[Watch] | None = getattr(_local, "watches", None)
    if stack is None:
        stack = []
        _local.watches = stack
    return stack


def _register(conn: Any) -> None:
    """Put ``conn`` under every watch active in this thread (called as it sends a request)."""
    watches = list(_stack())
    if not watches:
        return
    conn._orchestrator_watches = watches
    for watch in watches:
        watch._adopt(conn)


def _release(conn: Any) -> None:
    """Take ``conn`` away from its watches: it is back in the pool, maybe soon another's."""
    watches = getattr(conn, "_orchestrator_watches", None)
    if not watches:
        return
    conn._orchestrator_watches = None
    for watch in watches:
        watch._forget(conn)


def _shut(conn: Any) -> None:
    """Shut the connection's socket down; a read or send blocked on it fails at once.

    ``shutdown`` rather than ``close``: closing a descriptor another thread is blocked on does
    not wake that thread on Linux, and the number could be reused by an unrelated socket.
    """
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.shutdown(socket.SHUT_RDWR)


class _RegistersWithWatches:
    """Mixin for urllib3 connections: put the connection under the thread's watches as it
    sends a request (it comes first in the bases, so ``super()`` is the urllib3 class)."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _register(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def request_chunked(self, *args: Any, **kwargs: Any) -> Any:
        # urllib3 1.26 (Debian 12) sends chunked bodies through this method instead.
        _register(self)
        return getattr(super(), "request_chunked")(*args, **kwargs)  # noqa: B009


class _ReleasesFromWatches:
    """Mixin for urllib3 pools: a connection handed back leaves its watches."""

    def _put_conn(self, conn: Any) -> None:
        _release(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _WatchedHTTPConnection(_RegistersWithWatches, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_RegistersWithWatches, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(_ReleasesFromWatches, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(_ReleasesFromWatches, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOL_CLASSES = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose connections a :class:`Watch` can cut (see the module doc)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Create the pool manager with the watched connection pools."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Return the proxy's manager, with watched pools unless it is a SOCKS proxy."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager


@dataclass(frozen=True)
class StallRule:
    """Abort a transfer that moves fewer than ``min_bytes_per_second`` over a sliding window.

    Attributes:
        window_seconds: Length of the window the average is taken over.
        min_bytes_per_second: The floor of that average.
    """

    window_seconds: float
    min_bytes_per_second: float

    def shortfall(self, samples: Sequence[tuple[float, int]], now: float) -> int | None:
        """Return the bytes moved in the last window when that is below the floor, else None.

        Args:
            samples: ``(time, bytes so far)`` pairs, oldest first; the first is the start.
            now: The current time; the last sample is taken at ``now``.
        """
        if not samples or now - samples[0][0] < self.window_seconds:
            return None  # the first window is not over yet
        start = now - self.window_seconds
        before = samples[0][1]
        for when, done in samples:
            if when > start:
                break
            before = done
        moved = samples[-1][1] - before
        if moved < self.min_bytes_per_second * self.window_seconds:
            return max(moved, 0)
        return None


class Watch:
    """Bound one exchange (or transfer) by a deadline, a stall rule, or both.

    Use as a context manager around sending the request *and* reading its answer; nesting is
    allowed (a token fetch inside a download), and a connection is cut by every watch around it.

    Args:
        subject: Who is slow, for messages: ``registry 'r'``, ``hugging face at 'u'``.
        what: What moves, for messages: ``the manifest of 'x'``, ``layer 'sha256:…'``.
        retry: What the user should do, for messages: ``pull again (the download resumes)``.
        deadline_seconds: Everything must be done within this many seconds (None: no deadline).
        stall: The stall rule (None: none).
        clock: Monotonic clock.
    """

    def __init__(
        self,
        *,
        subject: str,
        what: str,
        retry: str = "try again later",
        deadline_seconds: float | None = None,
        stall: StallRule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subject = subject
        self.what = what
        self.retry = retry
        self.deadline_seconds = deadline_seconds
        self.stall = stall
        self._transfer_rule = stall
        self._clock = clock
        self._lock = threading.Lock()
        self._connections: set[Any] = set()
        self._stop = threading.Event()
        self._done = 0
        self._start = 0.0
        self._deadline: float | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._thread: threading.Thread | None = None
        self.reason: str | None = None
        self.details: dict[str, object] = {}

    # -- the watched thread -------------------------------------------------------------------

    def __enter__(self) -> Watch:
        self._start = self._clock()
        if self.deadline_seconds is not None:
            self._deadline = self._start + self.deadline_seconds
        self._samples.append((self._start, 0))
        _stack().append(self)
        if self._deadline is not None or self.stall is not None:
            self._thread = threading.Thread(
                target=self._monitor, name="registry-watch", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        with contextlib.suppress(ValueError):
            _stack().remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._connections.clear()
        if self.reason is not None and (exc is None or isinstance(exc, Exception)):
            # The cut made the read fail in whatever way the layer below reports it (a broken
            # transfer, a short body), or, with urllib3 1.26, end early without any error: what
            # was read may be cut short. The real cause is the slowness this watch measured.
            raise RegistryError(self.reason, details=dict(self.details)) from exc

    def progress(self, done: int) -> None:
        """Record that ``done`` bytes have moved so far (the stall rule counts these)."""
        self._done = done

    def answer_within(self, seconds: float) -> None:
        """Replace the stall rule by a deadline ``seconds`` from now.

        For an upload whose body is sent: no bytes move while the registry verifies and stores
        the blob, so the answer gets a deadline instead.
        """
        with self._lock:
            self.stall = None
            self._deadline = self._clock() + seconds
            self.deadline_seconds = seconds
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._monitor, name="registry-watch", daemon=True
            )
            self._thread.start()

    def transfer_again(self) -> None:
        """Put the stall rule back (a body sent again), with a fresh first window."""
        with self._lock:
            if self._transfer_rule is None or self.stall is not None:
                return
            self.stall = self._transfer_rule
            self._deadline = None
            self.deadline_seconds = None
            self._done = 0
            self._samples.clear()
            self._samples.append((self._clock(), 0))

    # -- the monitor thread -------------------------------------------------------------------

    def _adopt(self, conn: Any) -> None:
        with self._lock:
            self._connections.add(conn)
            tripped = self.reason is not None
        if tripped:
            _shut(conn)

    def _forget(self, conn: Any) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _next_wait(self, now: float) -> float:
        if self.reason is not None:
            return _TRIPPED_TICK_SECONDS
        waits = [1.0]
        if self._deadline is not None:
            waits.append(self._deadline - now)
        if self.stall is not None:
            waits.append(self.stall.window_seconds / 10)
        return max(0.01, min(waits))

    def _monitor(self) -> None:
        while not self._stop.wait(self._next_wait(self._clock())):
            now = self._clock()
            with self._lock:
                if self.reason is None:
                    self._check(now)
                connections = list(self._connections) if self.reason is not None else []
            for conn in connections:
                _shut(conn)

    def _check(self, now: float) -> None:
        """Set ``reason`` when the deadline passed or the transfer stalled (lock held)."""
        if self._deadline is not None and now >= self._deadline:
            self.reason = (
                f"{self.subject} took more than {self.deadline_seconds:g}s over {self.what}; "
                f"it may be overloaded or stuck: {self.retry} ({_SETTINGS_HINT_DEADLINE})"
            )
            self.details = {"deadline_seconds": self.deadline_seconds, "received": self._done}
        elif self.stall is not None:
            self._samples.append((now, self._done))
            while len(self._samples) > 2 and self._samples[1][0] <= now - self.stall.window_seconds:
                self._samples.popleft()  # keep one sample at or before the window's start
            moved = self.stall.shortfall(self._samples, now)
            if moved is not None:
                window = self.stall.window_seconds
                floor = self.stall.min_bytes_per_second
                self.reason = (
                    f"{self.what} stalled: {self.subject} moved only {moved} bytes in the last "
                    f"{window:g}s, below the floor of {floor:g} bytes/s; check the network, then "
                    f"{self.retry} ({_SETTINGS_HINT_STALL})"
                )
                self.details = {
                    "stalled": True,
                    "window_seconds": window,
                    "min_bytes_per_second": floor,
                    "moved": moved,
                    "done": self._done,
                }
        if self.reason is not None:
            log.warning("registry transfer cut: %s", self.reason)
