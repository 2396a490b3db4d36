"""The Responses store: count, age and byte bounds, chains that outlive their ancestors."""

from __future__ import annotations

import threading
from typing import Any

from orchestrator.api.responses_store import ResponseStore, StoredResponse, entry


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(number: int, text: str = "answer") -> dict[str, Any]:
    output = [{"id": f"msg_out{number}", "type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {"id": f"resp_{number}", "object": "response", "output": output}


def user_item(text: str) -> dict[str, Any]:
    return {"id": "msg_in", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}


def save(store: ResponseStore, number: int, parent: StoredResponse | None = None) -> StoredResponse:
    stored = entry(response(number), [user_item(f"q{number}")], parent)
    store.save(stored)
    return stored


def test_count_bound_drops_the_oldest_first() -> None:
    store = ResponseStore(3, -1)
    for number in range(5):
        save(store, number)
    assert len(store) == 3
    assert store.get("resp_0") is None and store.get("resp_1") is None
    assert [store.get(f"resp_{n}") is not None for n in (2, 3, 4)] == [True, True, True]


def test_ttl_counts_from_the_write_and_negative_never_expires() -> None:
    clock = Clock()
    store = ResponseStore(10, 60, clock=clock)
    save(store, 1)
    clock.now += 30
    save(store, 2)
    clock.now += 31  # resp_1 is 61 s old, resp_2 31 s
    assert store.get("resp_1") is None
    assert store.get("resp_2") is not None
    clock.now += 30
    assert len(store) == 0
    forever = ResponseStore(10, -1, clock=clock)
    save(forever, 1)
    clock.now += 10**9
    assert forever.get("resp_1") is not None


def test_a_rewrite_refreshes_the_age_and_the_order() -> None:
    clock = Clock()
    store = ResponseStore(2, 60, clock=clock)
    first = save(store, 1)
    save(store, 2)
    clock.now += 50
    store.save(first)  # written again: youngest now
    save(store, 3)  # over the count: the oldest write (resp_2) goes
    assert store.get("resp_2") is None
    clock.now += 20
    assert store.get("resp_1") is not None


def test_zero_stores_nothing() -> None:
    store = ResponseStore(0, 3600)
    assert store.save(entry(response(1), [], None)) is False
    assert store.get("resp_1") is None


def test_chain_history_is_every_step_input_then_output() -> None:
    store = ResponseStore(10, -1)
    first = save(store, 1)
    second = save(store, 2, first)
    third = save(store, 3, second)
    texts = [
        (item["role"], item["content"][0]["text"]) for item in third.history_items()
    ]
    assert texts == [("user", "q1"), ("assistant", "answer"), ("user", "q2"),
                     ("assistant", "answer"), ("user", "q3"), ("assistant", "answer")]


def test_a_chain_survives_its_ancestors_leaving_the_index() -> None:
    store = ResponseStore(1, -1)
    first = save(store, 1)
    second = save(store, 2, first)  # evicts resp_1 from the index
    assert store.get("resp_1") is None
    stored = store.get("resp_2")
    assert stored is second
    assert [item["content"][0]["text"] for item in stored.history_items()][:2] == ["q1", "answer"]


def test_delete_answers_whether_it_was_there() -> None:
    store = ResponseStore(10, -1)
    save(store, 1)
    assert store.delete("resp_1") is True
    assert store.delete("resp_1") is False
    assert store.get("resp_1") is None


def test_bytes_are_charged_per_chain_and_bounded() -> None:
    one = entry(response(1, "x" * 1000), [], None)
    two = entry(response(2, "y" * 1000), [], one)
    assert two.chain_bytes == one.own_bytes + two.own_bytes
    store = ResponseStore(100, -1, max_bytes=one.chain_bytes + two.chain_bytes)
    store.save(one)
    store.save(two)
    assert store.stored_bytes == one.chain_bytes + two.chain_bytes
    store.save(entry(response(3, "z"), [], None))  # over the budget: the oldest goes
    assert store.get("resp_1") is None and store.get("resp_2") is not None
    assert store.stored_bytes <= store.max_bytes
    huge = entry(response(4, "w" * 10 * store.max_bytes), [], None)
    assert store.save(huge) is False  # alone over the budget: not kept, nothing else dropped
    assert store.get("resp_2") is not None


def test_threads_share_it_safely() -> None:
    store = ResponseStore(50, -1)

    def work(base: int) -> None:
        for number in range(base, base + 200):
            save(store, number)
            store.get(f"resp_{number - 1}")
            store.delete(f"resp_{number - 2}")

    threads = [threading.Thread(target=work, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < len(store) <= 50
    assert store.stored_bytes == sum(
        stored.chain_bytes for stored in store._entries.values()  # noqa: SLF001
    )
