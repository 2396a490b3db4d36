"""The bounded, in-memory store of Responses API responses (``store: true``, the default).

What it holds is what ``GET /v1/responses/{id}``, ``.../input_items`` and
``previous_response_id`` need: the response object as answered, the request's own input items
(normalized, with ids) and a reference to the stored response it continued. Chaining walks
those references, not the index, so a chain keeps its whole history (resp3 -> resp2 -> resp1)
even after an ancestor was dropped from the index by the count or age bound, or deleted: a
response keeps alive exactly the history it was answered with, and nothing else.

Bounds (whichever bites first drops the oldest entries):

- count: ``responses_max_stored`` entries (0: store none);
- age: ``responses_ttl`` seconds since the entry was written (negative: never expires);
- bytes: :data:`MAX_STORED_BYTES`. Each entry is charged for its whole chain (its own items
  plus those of every ancestor it references), so the sum of charges bounds the memory the
  index keeps alive however chains share ancestors. One response's own items are at most its
  request body (10 MiB cap, most of it only possible as images) plus its output (the model's
  generation, a few KiB to a few hundred KiB); text history is also bounded by the model's
  context, since the engine refuses a chain that no longer fits. Images are why the byte bound
  exists: a thousand 10 MiB requests would otherwise hold 10 GiB.

Sweeping is lazy, with no thread of its own: entries are kept in write order (an
:class:`~collections.OrderedDict`), so the expired and the oldest are always at the front and
each insert or lookup pops them there. Every operation is O(1) amortized under one lock. The
store lives in the worker's memory: nothing survives a daemon restart.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Memory the index may keep alive, counted as JSON bytes of the stored items (see above).
MAX_STORED_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(eq=False)
class StoredResponse:
    """One stored response and what continuing it needs.

    Attributes:
        response: The response object as it was answered (JSON-ready).
        input_items: The request's own input items, normalized and with ids.
        parent: The stored response this one continued (``previous_response_id``), if any.
        own_bytes: JSON size of this entry's items.
        chain_bytes: ``own_bytes`` plus the parent's ``chain_bytes``.
        written_at: Monotonic time of the write (for the age bound).
    """

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    parent: StoredResponse | None = None
    own_bytes: int = 0
    chain_bytes: int = 0
    written_at: float = 0.0

    @property
    def id(self) -> str:
        """Return the response id."""
        return str(self.response["id"])

    def history_items(self) -> list[dict[str, Any]]:
        """Return the chain's items, oldest first: each step's input items, then its output.

        Walks the parent references iteratively (a long chain is no recursion risk).
        """
        chain: list[StoredResponse] = []
        node: StoredResponse | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        items: list[dict[str, Any]] = []
        for step in reversed(chain):
            items.extend(step.input_items)
            items.extend(step.response.get("output") or [])
        return items


def entry(
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    parent: StoredResponse | None,
) -> StoredResponse:
    """Return a :class:`StoredResponse` with its sizes computed."""
    own = len(json.dumps(input_items)) + len(json.dumps(response.get("output") or []))
    chain = own + (parent.chain_bytes if parent is not None else 0)
    return StoredResponse(response, input_items, parent, own_bytes=own, chain_bytes=chain)


class ResponseStore:
    """Responses by id, bounded by count, age and bytes; safe to share between threads.

    Args:
        max_count: Most entries kept (0: keep none).
        ttl: Seconds an entry lives after it is written (negative: forever).
        max_bytes: Most bytes of chains the index may keep alive.
        clock: Monotonic clock (injected by tests).
    """

    def __init__(
        self,
        max_count: int,
        ttl: float,
        *,
        max_bytes: int = MAX_STORED_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count = max_count
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            self._sweep(self._clock())
            return len(self._entries)

    @property
    def stored_bytes(self) -> int:
        """Return the bytes currently charged to the index."""
        with self._lock:
            return self._bytes

    def save(self, stored: StoredResponse) -> bool:
        """Store ``stored`` (replacing an entry with its id); return whether it was kept.

        An entry alone over the byte bound, or a store of size 0, keeps nothing.
        """
        with self._lock:
            now = self._clock()
            self._drop(stored.id)
            if self.max_count <= 0 or stored.chain_bytes > self.max_bytes:
                self._sweep(now)
                return False
            stored.written_at = now
            self._entries[stored.id] = stored
            self._bytes += stored.chain_bytes
            self._sweep(now)
            while len(self._entries) > self.max_count or self._bytes > self.max_bytes:
                self._pop_oldest()
            return True

    def get(self, response_id: str) -> StoredResponse | None:
        """Return the live entry ``response_id``, ``None`` when unknown or expired."""
        with self._lock:
            self._sweep(self._clock())
            return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        """Drop ``response_id``; return whether it was there (and live)."""
        with self._lock:
            self._sweep(self._clock())
            return self._drop(response_id)

    def _expired(self, stored: StoredResponse, now: float) -> bool:
        return self.ttl >= 0 and now - stored.written_at >= self.ttl

    def _sweep(self, now: float) -> None:
        # Write order = age order: the expired are all at the front.
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if not self._expired(oldest, now):
                return
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, stored = self._entries.popitem(last=False)
        self._bytes -= stored.chain_bytes

    def _drop(self, response_id: str) -> bool:
        stored = self._entries.pop(response_id, None)
        if stored is None:
            return False
        self._bytes -= stored.chain_bytes
        return True
